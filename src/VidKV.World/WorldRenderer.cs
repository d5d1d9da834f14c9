using System.Runtime.CompilerServices;

namespace VidKV.World;

/// <summary>
/// Draws a world frame of any size into RGB bytes: the background, then each object as its shape's signed distance
/// field, anti-aliased over one pixel (coverage = ½ − distance in pixels). Pixels a shape covers wholly get exactly its
/// palette colour; pixels no object reaches get exactly the background. Shapes are drawn in units of the object's
/// radius (times the frame's shorter side), so they keep their proportions in any aspect ratio, and every shape fits
/// its unit disc. Allocates nothing.
/// </summary>
public static class WorldRenderer
{
    /// <summary>Draws <paramref name="background"/> and <paramref name="objects"/> (in order) into <paramref name="rgb"/>.</summary>
    /// <param name="rgb">[height, width, 3] bytes, rows top to bottom</param>
    public static void Render(in Background background, ReadOnlySpan<WorldObject> objects, Span<byte> rgb, int width, int height)
    {
        RenderBackground(background, rgb, width, height);
        foreach (var o in objects) Draw(o, rgb, width, height);
    }

    /// <summary>Draws only <paramref name="background"/>.</summary>
    /// <param name="rgb">[height, width, 3] bytes, rows top to bottom</param>
    public static void RenderBackground(in Background background, Span<byte> rgb, int width, int height)
    {
        if (width <= 0 || height <= 0) throw new ArgumentException($"frame size {width}×{height} is not positive");
        if (rgb.Length < 3L * width * height) throw new ArgumentException($"a {width}×{height} RGB frame needs {3L * width * height} bytes, the buffer has {rgb.Length}");
        int rowBytes = 3 * width;
        // Cells are counted from pixel centres: cell index = (pixel + ½) / cell width in pixels.
        double perCell = 1 / Math.Max(background.CellSize * Math.Min(width, height), 1);
        for (int y = 0; y < height; y++)
        {
            var row = rgb.Slice(y * rowBytes, rowBytes);
            int rowCell = (int)((y + 0.5) * perCell);
            switch (background.Pattern)
            {
                case BackgroundPattern.Plain:
                    if (y > 0) { rgb[..rowBytes].CopyTo(row); continue; }
                    Fill(row, background.Base);
                    break;
                case BackgroundPattern.HorizontalStripes:
                    Fill(row, (rowCell & 1) == 0 ? background.Base : background.Alternate);
                    break;
                case BackgroundPattern.VerticalStripes:
                    if (y > 0) { rgb[..rowBytes].CopyTo(row); continue; }
                    for (int x = 0; x < width; x++) Put(row, x, ((int)((x + 0.5) * perCell) & 1) == 0 ? background.Base : background.Alternate);
                    break;
                case BackgroundPattern.Checker:
                    for (int x = 0; x < width; x++) Put(row, x, (((int)((x + 0.5) * perCell) + rowCell) & 1) == 0 ? background.Base : background.Alternate);
                    break;
                default:
                    for (int x = 0; x < width; x++) Put(row, x, ((int)((x + y + 1) * perCell) & 1) == 0 ? background.Base : background.Alternate);
                    break;
            }
        }
    }

    static void Fill(Span<byte> row, Rgb colour)
    {
        for (int x = 0; x < row.Length; x += 3)
        {
            row[x] = colour.R;
            row[x + 1] = colour.G;
            row[x + 2] = colour.B;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put(Span<byte> row, int x, Rgb colour)
    {
        row[3 * x] = colour.R;
        row[3 * x + 1] = colour.G;
        row[3 * x + 2] = colour.B;
    }

    /// <summary>Blends one object over what is drawn, over the pixels of its bounding box inside the frame.</summary>
    static void Draw(in WorldObject o, Span<byte> rgb, int width, int height)
    {
        float radius = (float)(o.Radius * Math.Min(width, height));
        float cx = (float)(o.X * width), cy = (float)(o.Y * height), perRadius = 1 / radius;
        int left = Math.Max(0, (int)MathF.Floor(cx - radius - 1)), right = Math.Min(width - 1, (int)MathF.Ceiling(cx + radius + 1));
        int top = Math.Max(0, (int)MathF.Floor(cy - radius - 1)), bottom = Math.Min(height - 1, (int)MathF.Ceiling(cy + radius + 1));
        var colour = WorldPalette.Of(o.Colour);
        for (int y = top; y <= bottom; y++)
        {
            float v = (y + 0.5f - cy) * perRadius;
            var row = rgb.Slice(3 * y * width, 3 * width);
            for (int x = left; x <= right; x++)
            {
                float coverage = 0.5f - Distance(o.Shape, (x + 0.5f - cx) * perRadius, v) * radius;
                if (coverage <= 0) continue;
                if (coverage >= 1)
                {
                    Put(row, x, colour);
                    continue;
                }
                int i = 3 * x;
                row[i] = Blend(row[i], colour.R, coverage);
                row[i + 1] = Blend(row[i + 1], colour.G, coverage);
                row[i + 2] = Blend(row[i + 2], colour.B, coverage);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static byte Blend(byte under, byte over, float coverage) => (byte)(under + (over - under) * coverage + 0.5f);

    /// <summary>Half the side of the square.</summary>
    internal const float SquareHalf = 0.7f;
    /// <summary>The ring's band: from 0.5 to 1 of the radius.</summary>
    internal const float RingMiddle = 0.75f, RingHalfWidth = 0.25f;
    /// <summary>The cross's arms: half-length and half-width.</summary>
    internal const float ArmLength = 0.95f, ArmHalfWidth = 0.3f;
    /// <summary>The star's inner vertices, as a fraction of its tips' radius (0.382 would be a regular pentagram; fuller reads better when small).</summary>
    internal const float StarInner = 0.45f;

    /// <summary>Outward normals and offsets of the triangle's edges (pointing up, circumradius 1, centred on its centroid; inradius ½).</summary>
    static readonly (float X, float Y, float C)[] triangle = [(0, 1, 0.5f), (0.8660254f, -0.5f, 0.5f), (-0.8660254f, -0.5f, 0.5f)];

    /// <summary>The star's five tip directions (the first up) and, per tip, its two edges' outward normals and offsets.</summary>
    static readonly (float X, float Y)[] starTips = new (float, float)[5];
    static readonly (float X, float Y, float C)[] starEdges = new (float, float, float)[10];

    static WorldRenderer()
    {
        for (int k = 0; k < 5; k++)
        {
            double tip = (-90 + 72 * k) * Math.PI / 180;
            var (tx, ty) = ((float)Math.Cos(tip), (float)Math.Sin(tip));
            starTips[k] = (tx, ty);
            for (int side = 0; side < 2; side++)
            {
                // The edge from the tip to the inner vertex 36° to one side; its normal points away from the centre.
                double inner = tip + (side == 0 ? -36 : 36) * Math.PI / 180;
                float ix = StarInner * (float)Math.Cos(inner), iy = StarInner * (float)Math.Sin(inner);
                float nx = iy - ty, ny = tx - ix, length = MathF.Sqrt(nx * nx + ny * ny);
                (nx, ny) = (nx / length, ny / length);
                if (nx * tx + ny * ty < 0) (nx, ny) = (-nx, -ny);
                starEdges[2 * k + side] = (nx, ny, nx * tx + ny * ty);
            }
        }
    }

    /// <summary>
    /// The signed distance from (<paramref name="u"/>, <paramref name="v"/>) to the edge of <paramref name="shape"/>, in
    /// units of the radius (negative inside): exact for circles and rings, the largest edge distance for polygons (exact
    /// inside and beside an edge, a little less near a corner outside, which only softens corners' anti-aliasing).
    /// </summary>
    internal static float Distance(Shape shape, float u, float v)
    {
        float disc = MathF.Sqrt(u * u + v * v) - 1;
        // Every shape fits its unit disc; bounding polygons by it also stops the edge-distance estimate's halo beyond
        // sharp tips (the star's and the triangle's) at half a pixel past the disc.
        switch (shape)
        {
            case Shape.Circle:
                return disc;
            case Shape.Ring:
                return MathF.Abs(disc + 1 - RingMiddle) - RingHalfWidth;
            case Shape.Square:
                return MathF.Max(MathF.Abs(u), MathF.Abs(v)) - SquareHalf;
            case Shape.Cross:
            {
                float au = MathF.Abs(u), av = MathF.Abs(v);
                return MathF.Max(disc, MathF.Min(MathF.Max(au - ArmLength, av - ArmHalfWidth), MathF.Max(au - ArmHalfWidth, av - ArmLength)));
            }
            case Shape.Triangle:
            {
                float d = disc;
                foreach (var (x, y, c) in triangle) d = MathF.Max(d, x * u + y * v - c);
                return d;
            }
            default:
            {
                // The tip whose direction is nearest picks the sector (sectors meet at the inner vertices); in it the
                // star is a convex kite whose outer edges are the tip's two edges.
                int best = 0;
                float bestDot = float.MinValue;
                for (int k = 0; k < 5; k++)
                {
                    float dot = starTips[k].X * u + starTips[k].Y * v;
                    if (dot > bestDot) (best, bestDot) = (k, dot);
                }
                var (x1, y1, c1) = starEdges[2 * best];
                var (x2, y2, c2) = starEdges[2 * best + 1];
                return MathF.Max(disc, MathF.Max(x1 * u + y1 * v - c1, x2 * u + y2 * v - c2));
            }
        }
    }
}
