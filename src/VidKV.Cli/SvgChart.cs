using System.Globalization;
using System.Security;
using System.Text;

namespace VidKV.Cli;

/// <summary>
/// Line charts as SVG, written by hand (a chart of a few lines needs no plotting library, and SkiaSharp's native
/// library, which ScottPlot draws with, is not on every Debian box): panels side by side over one x axis, each with
/// its axes, ticks, grid, a polyline per series (<c>class="series"</c>, <c>data-series</c> its name) with a dot at each
/// point and an optional dashed reference line; one legend below, a series keeping its colour in every panel. The x
/// axis is logarithmic when its values span a factor of 4 or more, with a tick at each value.
/// </summary>
public static class SvgChart
{
    /// <summary>A named line: its points (NaN values left out).</summary>
    public sealed record Series(string Name, IReadOnlyList<(double X, double Y)> Points);

    /// <summary>One panel: a title, the y axis label, the series, the y range (from <see cref="YMin"/>, to <see cref="YMax"/> or the data's nice ceiling) and a reference line.</summary>
    public sealed record Panel(string Title, string YLabel, IReadOnlyList<Series> Series)
    {
        /// <summary>Bottom of the y axis (0 by default).</summary>
        public double YMin { get; init; }
        /// <summary>Top of the y axis; null: the data's (and the reference's) largest value, up to the next tick.</summary>
        public double? YMax { get; init; }
        /// <summary>A dashed horizontal line at Y with a label, such as a limit.</summary>
        public (double Y, string Label)? Reference { get; init; }
    }

    const int PanelWidth = 440, PanelHeight = 300, Left = 64, Right = 16, Top = 56, Bottom = 52, LegendColumn = 220, LegendRow = 18;

    static readonly string[] Palette =
    [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a",
    ];

    /// <summary>The whole SVG document.</summary>
    public static string Render(string title, string xLabel, IReadOnlyList<double> xTicks, IReadOnlyList<Panel> panels)
    {
        if (panels.Count == 0) throw new ArgumentException("a chart needs at least one panel", nameof(panels));
        var names = panels.SelectMany(p => p.Series).Select(s => s.Name).Distinct().ToList();
        int columns = Math.Max(1, panels.Count * PanelWidth / LegendColumn);
        int legendRows = (names.Count + columns - 1) / columns;
        int width = panels.Count * PanelWidth, height = Top + PanelHeight + legendRows * LegendRow + 16;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{width / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{Escape(title)}</text>\n");

        double[] xs = xTicks.Count > 0 ? [.. xTicks.Order()] : [0, 1];
        bool logX = xs[0] > 0 && xs[^1] / xs[0] >= 4;
        double xLow = logX ? Math.Log10(xs[0]) : xs[0], xHigh = logX ? Math.Log10(xs[^1]) : xs[^1];
        if (xHigh - xLow < 1e-12) (xLow, xHigh) = (xLow - 1, xHigh + 1); // a single value sits in the middle
        double pad = 0.05 * (xHigh - xLow);
        (xLow, xHigh) = (xLow - pad, xHigh + pad);

        for (int p = 0; p < panels.Count; p++)
        {
            var panel = panels[p];
            int x0 = p * PanelWidth + Left, x1 = (p + 1) * PanelWidth - Right, y0 = Top + PanelHeight - Bottom, y1 = Top;
            var values = panel.Series.SelectMany(s => s.Points).Select(q => q.Y).Where(double.IsFinite).ToList();
            if (panel.Reference is { } reference) values.Add(reference.Y);
            double yMax = panel.YMax ?? (values.Count > 0 ? values.Max() : 1);
            if (yMax <= panel.YMin) yMax = panel.YMin + 1;
            var yTicks = NiceTicks(panel.YMin, yMax);
            yMax = Math.Max(yMax, yTicks[^1]);
            double X(double x) => x0 + (x1 - x0) * ((logX ? Math.Log10(x) : x) - xLow) / (xHigh - xLow);
            double Y(double y) => y0 - (y0 - y1) * (y - panel.YMin) / (yMax - panel.YMin);

            svg.Append(CultureInfo.InvariantCulture, $"<g class=\"panel\" data-title=\"{Escape(panel.Title)}\">\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{(x0 + x1) / 2}\" y=\"{Top - 12}\" text-anchor=\"middle\" font-size=\"12\">{Escape(panel.Title)}</text>\n");
            foreach (double t in yTicks)
            {
                double y = Y(t);
                svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{x0}\" y1=\"{y:F1}\" x2=\"{x1}\" y2=\"{y:F1}\" stroke=\"#e6e6e6\"/>");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x0 - 6}\" y=\"{y + 4:F1}\" text-anchor=\"end\">{Label(t)}</text>\n");
            }
            foreach (double t in xs)
            {
                double x = X(t);
                svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{x:F1}\" y1=\"{y0}\" x2=\"{x:F1}\" y2=\"{y0 + 5}\" stroke=\"black\"/>");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x:F1}\" y=\"{y0 + 18}\" text-anchor=\"middle\">{Label(t)}</text>\n");
            }
            svg.Append(CultureInfo.InvariantCulture, $"<polyline class=\"axes\" points=\"{x0},{y1} {x0},{y0} {x1},{y0}\" fill=\"none\" stroke=\"black\"/>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{(x0 + x1) / 2}\" y=\"{y0 + 38}\" text-anchor=\"middle\">{Escape(xLabel)}{(logX ? " (log scale)" : "")}</text>\n");
            svg.Append(CultureInfo.InvariantCulture, $"<text transform=\"translate({x0 - 46},{(y0 + y1) / 2}) rotate(-90)\" text-anchor=\"middle\">{Escape(panel.YLabel)}</text>\n");
            if (panel.Reference is { } line)
            {
                double y = Y(line.Y);
                svg.Append(CultureInfo.InvariantCulture, $"<line class=\"reference\" x1=\"{x0}\" y1=\"{y:F1}\" x2=\"{x1}\" y2=\"{y:F1}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x1 - 4}\" y=\"{y - 4:F1}\" text-anchor=\"end\">{Escape(line.Label)}</text>\n");
            }
            foreach (var series in panel.Series)
            {
                int index = names.IndexOf(series.Name);
                string colour = Palette[index % Palette.Length];
                string dash = index >= Palette.Length ? " stroke-dasharray=\"4 3\"" : "";
                var points = series.Points.Where(q => double.IsFinite(q.X) && double.IsFinite(q.Y) && (!logX || q.X > 0)).OrderBy(q => q.X).ToList();
                svg.Append(CultureInfo.InvariantCulture, $"<polyline class=\"series\" data-series=\"{Escape(series.Name)}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"");
                svg.AppendJoin(' ', points.Select(q => string.Create(CultureInfo.InvariantCulture, $"{X(q.X):F1},{Y(q.Y):F1}")));
                svg.Append("\"/>\n");
                foreach (var q in points)
                    svg.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{X(q.X):F1}\" cy=\"{Y(q.Y):F1}\" r=\"3\" fill=\"{colour}\"><title>{Escape(series.Name)}: {Label(q.X)}, {q.Y.ToString("G4", CultureInfo.InvariantCulture)}</title></circle>\n");
            }
            svg.Append("</g>\n");
        }

        svg.Append("<g class=\"legend\">\n");
        for (int i = 0; i < names.Count; i++)
        {
            int x = 16 + i % columns * LegendColumn, y = Top + PanelHeight + i / columns * LegendRow;
            string dash = i >= Palette.Length ? " stroke-dasharray=\"4 3\"" : "";
            svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{x}\" y1=\"{y - 4}\" x2=\"{x + 22}\" y2=\"{y - 4}\" stroke=\"{Palette[i % Palette.Length]}\" stroke-width=\"2\"{dash}/>");
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x + 28}\" y=\"{y}\">{Escape(names[i])}</text>\n");
        }
        svg.Append("</g>\n</svg>\n");
        return svg.ToString();
    }

    /// <summary>Ticks at 1, 2 or 5 × 10^k steps from <paramref name="min"/> to at least <paramref name="max"/>, about <paramref name="count"/> of them.</summary>
    public static double[] NiceTicks(double min, double max, int count = 5)
    {
        double raw = (max - min) / count, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw))), normal = raw / magnitude;
        double step = (normal < 1.5 ? 1 : normal < 3 ? 2 : normal < 7 ? 5 : 10) * magnitude;
        var ticks = new List<double>();
        for (double t = Math.Floor(min / step) * step; ; t += step)
        {
            ticks.Add(Math.Round(t / step) * step);
            if (t >= max - step * 1e-9) break;
        }
        return [.. ticks];
    }

    static string Label(double value) => value.ToString("G6", CultureInfo.InvariantCulture);

    static string Escape(string text) => SecurityElement.Escape(text) ?? "";
}
