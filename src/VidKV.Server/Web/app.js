'use strict';
// VidKV's web page: start a live session on the demo (a generated world whose truth the server sends, so the page
// marks each answer and comment right or wrong), a file under the server's media root or an upload; play
// its video; ask questions and read the answers as they stream; read its progress and proactive comments; chart KV
// memory, ingest frames/s and tokens/s. Everything goes through the server's HTTP API with fetch(), so the API key
// (kept in sessionStorage) travels as a Bearer header, server-sent events included: EventSource cannot send headers.
// The <video> element plays the session's file itself (its URL carries a token of its own, as a video element sends
// no header): it shows what the model is watching at normal speed, while the model reads frames at the session's
// frames/s as fast as it can; the progress line says which stream time it has reached.

const $ = (id) => document.getElementById(id);
const MiB = 1024 * 1024;
const KeyStorage = 'vidkv-api-key';

const current = {
  id: null,            // the session shown
  events: null,        // AbortController of its event stream
  poll: 0,             // interval of its status polls
  lastTokens: null,    // {count, time} at the previous poll, for tokens/s
  demo: null,          // a demo session's world: {questions: [{question, answer}], events: [{second, narration}]}
};

let charts;

// ---- HTTP --------------------------------------------------------------------------------------------------------

/** fetch() with the API key; a response that is not 2xx throws an Error with the server's message and status. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = sessionStorage.getItem(KeyStorage);
  if (key) headers.set('Authorization', `Bearer ${key}`);
  const response = await fetch(path, { ...init, headers });
  if (!response.ok) throw await failure(response);
  return response;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) message += ' (paste the server\'s API key at the top right)';
  const error = new Error(message);
  error.status = response.status;
  return error;
}

function json(body) {
  return { headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
}

/**
 * Reads a text/event-stream response and calls onEvent(type, data) per event (type "message" when unnamed). An
 * exception thrown by onEvent ends the reading and is thrown from here.
 */
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length > 0) onEvent(type, data.join('\n'));
    }
  }
}

// ---- errors ------------------------------------------------------------------------------------------------------

function showError(error) {
  const box = $('error');
  box.textContent = error.message || String(error);
  box.hidden = false;
  if (error.status === 401) $('api-key').focus();
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

/** Runs an action of a button: errors go to the page, and the button is off while it runs. */
function action(button, run) {
  button.addEventListener('click', async () => {
    button.disabled = true;
    clearError();
    try {
      await run();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
}

// ---- the server: model and media ---------------------------------------------------------------------------------

async function connect() {
  clearError();
  try {
    const models = await (await api('/v1/models')).json();
    $('model').textContent = `model ${models.data.map((m) => m.id).join(', ')}`;
    await loadMedia();
  } catch (error) {
    $('model').textContent = 'not connected';
    showError(error);
  }
}

async function loadMedia() {
  const list = await (await api('/v1/media')).json();
  const select = $('media');
  select.replaceChildren();
  for (const file of list.data) {
    const option = document.createElement('option');
    option.value = file.path;
    option.textContent = `${file.path} (${(file.bytes / MiB).toFixed(1)} MiB)`;
    select.append(option);
  }
  if (list.data.length === 0) {
    const option = document.createElement('option');
    option.textContent = 'no videos under the server\'s --media-root';
    option.value = '';
    select.append(option);
  }
  select.disabled = $('watch-file').disabled = list.data.length === 0;
}

// ---- sessions ----------------------------------------------------------------------------------------------------

async function startSession(source) {
  const request = { source, fps: Number($('fps').value), proactive: $('proactive').checked };
  await closeSession(); // first: it holds one of the server's session slots
  const info = await (await api('/v1/sessions', { method: 'POST', ...json(request) })).json();
  open(info);
}

function open(info) {
  current.id = info.id;
  current.lastTokens = null;
  current.demo = info.demo || null;
  showDemoQuestions();
  $('answers').replaceChildren();
  $('events').replaceChildren();
  $('progress').textContent = 'starting…';
  for (const chart of Object.values(charts)) chart.clear();
  $('ask').disabled = $('delete').disabled = false;
  const video = $('video');
  if (info.video_url) {
    video.src = info.video_url;
    video.hidden = false;
    $('no-video').hidden = true;
    video.play().catch(() => { /* autoplay refused: the controls are there */ });
  } else {
    video.removeAttribute('src');
    video.hidden = true;
    $('no-video').hidden = false;
    $('no-video').textContent = 'This source has no file to play (a stream, a camera or pushed frames).';
  }
  show(info);
  followEvents(info.id);
  current.poll = setInterval(poll, 1000);
}

async function closeSession() {
  const id = current.id;
  if (!id) return;
  current.id = null;
  current.demo = null;
  showDemoQuestions();
  clearInterval(current.poll);
  if (current.events) current.events.abort();
  $('ask').disabled = $('delete').disabled = true;
  const video = $('video');
  video.pause();
  video.removeAttribute('src');
  video.load();
  try {
    await api(`/v1/sessions/${id}`, { method: 'DELETE' });
  } catch (error) {
    if (error.status !== 404) throw error; // already gone
  }
}

function show(info) {
  $('session-id').textContent = info.id;
  $('state').textContent = info.state + (info.error ? `: ${info.error}` : '');
  $('source').textContent = `${info.source} (${info.kind})`;
  $('frames').textContent = String(info.frames);
  $('stream-time').textContent = info.last_timestamp == null ? '–' : `${info.last_timestamp.toFixed(1)} s`;
  $('rows').textContent = String(info.rows);
  $('policy').textContent = info.kv_policy;
}

/** Status each second: the session's fields and a point on each chart. */
async function poll() {
  const id = current.id;
  if (!id) return;
  let info;
  try {
    info = await (await api(`/v1/sessions/${id}`)).json();
  } catch (error) {
    if (id !== current.id) return;
    if (error.status === 404) {
      clearInterval(current.poll);
      current.id = null;
      $('ask').disabled = $('delete').disabled = true;
    }
    showError(error);
    return;
  }
  if (id !== current.id) return;
  show(info);
  // tokens/s: tokens this session generated since the last poll, over the time since then.
  const now = performance.now() / 1000;
  const last = current.lastTokens;
  const tokensPerSecond = last ? Math.max(0, info.tokens_generated - last.count) / Math.max(now - last.time, 1e-3) : 0;
  current.lastTokens = { count: info.tokens_generated, time: now };
  charts.kv.add([info.kv.hot_bytes / MiB, info.kv.cold_bytes / MiB]);
  charts.fps.add([info.state === 'ingesting' ? info.frames_per_second : 0]);
  charts.tokens.add([tokensPerSecond]);
}

async function followEvents(id) {
  const controller = new AbortController();
  current.events = controller;
  try {
    const response = await api(`/v1/sessions/${id}/events`, { signal: controller.signal });
    await readEvents(response, (type, data) => onSessionEvent(JSON.parse(data)));
  } catch (error) {
    if (error.name !== 'AbortError' && id === current.id) showError(error);
  }
}

function onSessionEvent(event) {
  switch (event.type) {
    case 'progress':
      $('progress').textContent = `read ${event.frames} frames, up to ${(event.timestamp || 0).toFixed(1)} s of the stream`
        + ` (${(event.frames_per_second || 0).toFixed(2)} frames/s; KV hot ${(event.hot_bytes / MiB).toFixed(2)} MiB, cold ${(event.cold_bytes / MiB).toFixed(2)} MiB)`;
      break;
    case 'comment': {
      const text = event.text.trim();
      let verdict = '';
      if (current.demo) {
        const happened = current.demo.events.find((e) => e.second === Math.round(event.timestamp || 0));
        verdict = happened ? judge(text, happened.narration) : '   ✗ (nothing happened)';
      }
      addEvent('comment', `[${(event.timestamp || 0).toFixed(1)} s] ${text}${verdict}`);
      break;
    }
    case 'error':
      addEvent('error', event.message);
      break;
    case 'end':
      addEvent('end', `the session has ${event.state} after ${event.frames} frames${event.message ? `: ${event.message}` : ''}`);
      break;
    default:
      break;
  }
}

function addEvent(kind, text) {
  const item = document.createElement('li');
  item.className = kind;
  item.textContent = text;
  $('events').append(item);
  item.scrollIntoView({ block: 'nearest' });
}

// ---- questions ---------------------------------------------------------------------------------------------------

async function ask(question) {
  const id = current.id;
  if (!id) throw new Error('start a session first');
  const item = document.createElement('div');
  item.className = 'qa pending';
  const asked = document.createElement('div');
  asked.className = 'question';
  asked.textContent = question;
  const answer = document.createElement('div');
  answer.className = 'answer';
  item.append(asked, answer);
  $('answers').append(item);
  const request = { question, max_tokens: Number($('max-tokens').value), temperature: Number($('temperature').value), stream: true };
  try {
    const response = await api(`/v1/sessions/${id}/ask`, { method: 'POST', ...json(request) });
    await readEvents(response, (type, data) => {
      if (data === '[DONE]') {
        answer.dataset.done = 'true';
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
      if (choice && choice.finish_reason) answer.dataset.finish = choice.finish_reason;
    });
    if (answer.dataset.done !== 'true') throw new Error('the answer stopped before its end');
    const asked = current.demo && current.demo.questions.find((q) => q.question === question);
    if (asked) {
      const verdict = document.createElement('div');
      verdict.className = 'verdict';
      verdict.textContent = judge(answer.textContent.trim(), asked.answer).trim();
      verdict.dataset.right = String(verdict.textContent === '✓');
      item.append(verdict);
    }
  } catch (error) {
    answer.classList.add('failed');
    if (!answer.textContent) answer.textContent = '(no answer)';
    throw error;
  } finally {
    item.classList.remove('pending');
  }
}

/** What the demo's world says of something said: ✓ when it is the world's text (a final period aside), else the world's text. */
function judge(said, truth) {
  const bare = (text) => text.replace(/\.+$/, '');
  return bare(said) === bare(truth) ? '   ✓' : `   ✗ (the world: ${truth})`;
}

/** A demo session's questions as buttons that ask them (the world knows their answers); nothing for other sources. */
function showDemoQuestions() {
  const box = $('demo-questions');
  box.replaceChildren();
  box.hidden = !current.demo;
  if (!current.demo) return;
  const label = document.createElement('span');
  label.className = 'muted';
  label.textContent = 'The world\'s questions (best asked once the stream has ended):';
  box.append(label);
  for (const q of current.demo.questions) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'demo-question';
    button.textContent = q.question;
    action(button, async () => {
      $('question').value = q.question;
      await ask(q.question);
    });
    box.append(button);
  }
}

// ---- wiring ------------------------------------------------------------------------------------------------------

function init() {
  charts = {
    kv: new LineChart($('kv-chart'), [{ name: 'hot', color: '#d9480f' }, { name: 'cold', color: '#1c7ed6' }], { unit: ' MiB' }),
    fps: new LineChart($('fps-chart'), [{ name: 'frames/s', color: '#2b8a3e' }]),
    tokens: new LineChart($('tokens-chart'), [{ name: 'tokens/s', color: '#7048e8' }]),
  };
  window.addEventListener('resize', () => Object.values(charts).forEach((chart) => chart.draw()));

  $('api-key').value = sessionStorage.getItem(KeyStorage) || '';
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('api-key').value.trim();
    if (key) sessionStorage.setItem(KeyStorage, key); else sessionStorage.removeItem(KeyStorage);
    connect();
  });

  action($('demo'), () => startSession('demo'));
  action($('watch-file'), () => {
    if (!$('media').value) throw new Error('choose a video file first');
    return startSession($('media').value);
  });
  action($('upload'), async () => {
    const file = $('upload-file').files[0];
    if (!file) throw new Error('choose a video file to upload first');
    $('progress').textContent = `uploading ${file.name} (${(file.size / MiB).toFixed(1)} MiB)…`;
    let response;
    try {
      response = await api(`/v1/uploads?filename=${encodeURIComponent(file.name)}`, {
        method: 'POST', headers: { 'Content-Type': file.type || 'application/octet-stream' }, body: file,
      });
    } catch (error) {
      // A server that refuses a large body early may close the connection before the browser reads its 413.
      if (error instanceof TypeError) throw new Error(`the upload of ${file.name} failed (${error.message}): is it over the server's --max-upload limit?`);
      throw error;
    }
    const upload = await response.json();
    await startSession(upload.source);
  });
  action($('delete'), async () => {
    await closeSession();
    $('progress').textContent = 'Session deleted.';
  });
  $('ask-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const question = $('question').value.trim();
    if (!question) return;
    clearError();
    try {
      await ask(question);
    } catch (error) {
      showError(error);
    }
  });
  // Leaving the page ends its session, so it does not hold one of the server's session slots.
  window.addEventListener('pagehide', () => {
    if (!current.id) return;
    const key = sessionStorage.getItem(KeyStorage);
    fetch(`/v1/sessions/${current.id}`, { method: 'DELETE', keepalive: true, headers: key ? { Authorization: `Bearer ${key}` } : {} });
  });

  connect();
}

init();
