'use strict';
// Line charts on a <canvas>, drawn by hand: the latest `capacity` points of a few series, a y axis from 0 to a round
// number above the largest value shown, and a legend with each series' latest value. That is all the page needs, so
// no chart library is loaded. The canvas's data-points attribute counts the points ever added (tests read it).

class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{name: string, color: string}[]} series one line each, values added in this order
   * @param {{unit?: string, capacity?: number}} options
   */
  constructor(canvas, series, { unit = '', capacity = 120 } = {}) {
    this.canvas = canvas;
    this.series = series;
    this.unit = unit;
    this.capacity = capacity;
    this.clear();
  }

  /** Forgets every point (a new session). */
  clear() {
    this.points = [];
    this.added = 0;
    this.canvas.dataset.points = '0';
    this.draw();
  }

  /** Adds one point: a value per series. */
  add(values) {
    this.points.push(values);
    if (this.points.length > this.capacity) this.points.shift();
    this.added++;
    this.canvas.dataset.points = String(this.added);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 360;
    const height = canvas.clientHeight || 130;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = '11px system-ui, sans-serif';

    const left = 46, right = 8, top = 20, bottom = 8;
    const plotWidth = width - left - right, plotHeight = height - top - bottom;
    let largest = 0;
    for (const values of this.points) for (const v of values) if (v > largest) largest = v;
    const max = roundUp(largest);

    // Grid lines at 0, half and the top, labelled.
    g.strokeStyle = '#d0d7de';
    g.fillStyle = '#656d76';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const share of [0, 0.5, 1]) {
      const y = Math.round(top + plotHeight * (1 - share)) + 0.5;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + plotWidth, y);
      g.stroke();
      g.fillText(format(max * share, digitsOf(max / 2)), left - 4, y);
    }

    // One line per series, the newest point at the right edge.
    const step = plotWidth / Math.max(1, this.capacity - 1);
    const offset = this.capacity - this.points.length;
    this.series.forEach((s, k) => {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      this.points.forEach((values, i) => {
        const x = left + (offset + i) * step;
        const y = top + plotHeight * (1 - (values[k] || 0) / max);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      if (this.points.length === 1) g.arc(left + offset * step, top + plotHeight * (1 - (this.points[0][k] || 0) / max), 2, 0, 2 * Math.PI);
      g.stroke();
    });

    // Legend: each series' latest value.
    const latest = this.points[this.points.length - 1];
    g.textAlign = 'left';
    g.textBaseline = 'top';
    let x = left;
    this.series.forEach((s, k) => {
      const text = `${s.name} ${latest ? format(latest[k] || 0, legendDigits(latest[k] || 0)) : '–'}${this.unit}`;
      g.fillStyle = s.color;
      g.fillRect(x, 4, 10, 10);
      g.fillStyle = '#1f2328';
      g.fillText(text, x + 14, 3);
      x += 14 + g.measureText(text).width + 14;
    });
  }
}

/** The smallest of 1, 2, 5 × a power of ten at or above `value` (1 when nothing is above 0). */
function roundUp(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * power * (1 + 1e-9)) return m * power;
  return 10 * power;
}

/** Three significant digits for a legend's value, at most two decimals: 0.04, 3.57, 23.9, 512. */
function legendDigits(value) {
  return value >= 100 ? 0 : value >= 10 ? 1 : 2;
}

/** The fewest decimals (at most 4) that write `value` exactly: 2.5 → 1, 0.05 → 2, 10 → 0. */
function digitsOf(value) {
  for (let digits = 0; digits < 4; digits++) {
    const scaled = value * 10 ** digits;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6) return digits;
  }
  return 4;
}

function format(value, digits) {
  return value.toFixed(digits);
}
