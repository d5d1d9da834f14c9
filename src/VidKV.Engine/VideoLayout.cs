using System.Collections.Concurrent;
using System.Globalization;
using VidKV.Cache;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Text;

namespace VidKV.Engine;

/// <summary>How a session lays out the video frames it is given.</summary>
public enum VideoFormat
{
    /// <summary>The model family's own video format (see <see cref="Session.AppendFrameAsync"/>).</summary>
    Native,
    /// <summary>
    /// VideoLLM-online's stream format (Chen et al., 2024, "VideoLLM-online: Online Video Large Language Model for
    /// Streaming Video"; showlab/videollm-online <c>models/tokenization_live.py</c>, its chat template's stream turn
    /// <c>'\n[' + ','.join(frames) + ']'</c>): a segment opens with <c>"\n["</c>, frames follow separated by
    /// <c>","</c> (the token whose probability after a frame is LIVE's "stay silent"), and <c>"]"</c> closes it before
    /// the next text. Each frame is the family's own per-frame rows (SmolVLM's 64, OneVision's pooled 196, a Qwen-VL
    /// frame as an image grid), so it works with any family; LIVE's prompt carries no timestamps.
    /// </summary>
    FrameBrackets,
}

/// <summary>How sessions turn video frames into prompt rows.</summary>
public sealed record VideoOptions
{
    /// <summary>The family's own format, or VideoLLM-online's brackets.</summary>
    public VideoFormat Format { get; init; } = VideoFormat.Native;

    /// <summary>
    /// Qwen2.5-VL's <c>vision_config.tokens_per_second</c> (2 in every released Qwen2.5-VL config; llama.cpp's mmproj
    /// does not carry it): a temporal patch's M-RoPE t is ⌊seconds since the video's first frame × this⌋.
    /// </summary>
    public int TokensPerSecond { get; init; } = 2;

    /// <summary>
    /// LLaVA-OneVision only: end each video segment with LLaVA-Video's time instruction (LLaVA-NeXT's video demo and
    /// the lmms-lab/LLaVA-Video-7B-Qwen2 model card: <c>"\nThe video lasts for {T:.2f} seconds, and {N} frames are
    /// uniformly sampled from it. These frames are located at {t1:.2f}s,{t2:.2f}s,….Please answer the following
    /// questions related to this video.\n"</c>, T the last frame's stream time). Off by default: Hugging Face's
    /// OneVision prompt has no timestamps.
    /// </summary>
    public bool TimeInstruction { get; init; }

    /// <summary>
    /// Skip the tower for frames that have not changed: a frame whose tower input (its RGB bytes resized for the tower)
    /// differs from the last encoded frame's by at most this mean absolute difference, in levels of 0–255 per byte,
    /// reuses that frame's rows — it still goes into the session in its place, with its own timestamp (see
    /// <see cref="Session.ReusedFrames"/>). Compared with the last frame that was encoded, not the last reused one, so a
    /// slow drift is caught. Null (the default): every frame is encoded. 0 reuses only identical inputs.
    /// </summary>
    public double? UnchangedThreshold { get; init; }
}

/// <summary>Progress of <see cref="Session.AppendVideoAsync"/>: frames in the session so far, and the last one's stream timestamp and index.</summary>
public readonly record struct VideoProgress(int Frames, TimeSpan Timestamp, long Index);

/// <summary>
/// A frame preprocessed for the tower: planes [3][height][width], normalised (an array the encoder reuses: the session
/// hands it back with <see cref="FrameEncoder.Release"/> once the frame is encoded), and the resized RGB bytes they
/// came from.
/// </summary>
internal sealed record PreparedFrame(float[] Pixels, int Width, int Height, TimeSpan Timestamp, long Index, byte[] Resized);

/// <summary>
/// One video unit's projector rows (a frame; a Qwen-VL frame pair), with its grid columns (0: consecutive positions);
/// <see cref="Reused"/> when the rows are an earlier unit's (<see cref="VideoOptions.UnchangedThreshold"/>).
/// </summary>
internal sealed record EncodedFrame(float[] Rows, int Width, int Columns, TimeSpan Timestamp, long Index, bool Reused = false);

/// <summary>
/// The engine's vision half: frames and images through the preprocessor, tower and projector, one entry at a time
/// (the model's scratch buffers and Qwen-VL's layout cache are not shared between threads).
/// </summary>
internal sealed class FrameEncoder(VisionModel vision, DecoderModel text, VideoOptions options) : IDisposable
{
    readonly SemaphoreSlim gate = new(1, 1);
    readonly Activations buffers = new();
    /// <summary>Where the tower's passes run (one at a time, as <see cref="gate"/> has them anyway).</summary>
    readonly WorkThread tower = new("vidkv-vision");

    /// <summary>Ends the tower's thread once its last pass is done.</summary>
    public void Dispose() => tower.Dispose();

    public VisionModel Vision => vision;
    bool IsQwen => vision.Config.Projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL;

    /// <summary>Whether two frames make one unit (Qwen-VL's temporal patch in its own video format).</summary>
    public bool PairsFrames => IsQwen && options.Format == VideoFormat.Native;

    /// <summary>
    /// A video frame as the tower takes it: SmolVLM at the tower's size by a bilinear stretch (mtmd's overview resize;
    /// Hugging Face keeps the aspect and masks the padding patches), LLaVA-OneVision at the tower's size by a bicubic
    /// stretch (Hugging Face's <c>LlavaOnevisionVideoProcessor</c>: resize to 384×384, bicubic), Qwen-VL at the
    /// smart-resized size of an image (<see cref="ImagePreprocessor.SmartResize"/>).
    /// </summary>
    public Task<PreparedFrame> PrepareAsync(VideoFrame frame, CancellationToken cancellation) => Task.Run(() =>
    {
        var c = vision.Config;
        int s = c.ImageSize;
        RgbImage entry;
        try
        {
            entry = c.Projector switch
            {
                VisionProjector.Idefics3 => ImageResize.Resize(frame.Image, s, s, ResizeAlgorithm.Bilinear, ResizePadding.None),
                VisionProjector.Mlp => ImageResize.Resize(frame.Image, s, s, ResizeAlgorithm.Bicubic, ResizePadding.None),
                _ => ImagePreprocessor.Preprocess(c, frame.Image).Entries[0],
            };
        }
        finally
        {
            frame.Recycle(); // the resize was the frame's one reader
        }
        // 3 MiB of planes a 512² frame, reused: a stream then does not churn the large-object heap (gen-2 collections
        // 70 → 42 in 60 frames of the SmolVLM2 shape, GC pauses 239–251 → 130–163 ms, managed heap 262–265 → 171–243 MiB).
        int length = 3 * entry.Width * entry.Height;
        if (!sparePlanes.TryDequeue(out var planar) || planar.Length != length) planar = new float[length];
        ImagePreprocessor.Normalize(c, entry, planar);
        return new PreparedFrame(planar, entry.Width, entry.Height, frame.Timestamp, frame.Index, entry.Pixels);
    }, cancellation);

    /// <summary>Planes of frames already encoded, for the next ones: at most <see cref="SparePlanes"/> (the frames in flight).</summary>
    readonly ConcurrentQueue<float[]> sparePlanes = new();
    const int SparePlanes = 4;

    /// <summary>Takes back a prepared frame's planes once its unit is encoded (or failed to be): the frame must not be used after.</summary>
    public void Release(PreparedFrame frame)
    {
        if (sparePlanes.Count < SparePlanes) sparePlanes.Enqueue(frame.Pixels);
    }

    /// <summary>
    /// Encodes one unit: a frame (SmolVLM: the tower's rows; OneVision: the rows pooled 2×2 by
    /// <see cref="VisionModel.EncodeVideoFrame"/>), or for Qwen-VL the pair <paramref name="first"/>,
    /// <paramref name="second"/> through the two-frame patch kernel (the first twice when there is no second).
    /// </summary>
    public async Task<EncodedFrame> EncodeAsync(PreparedFrame first, PreparedFrame? second, CancellationToken cancellation)
    {
        await gate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            if (last is { } previous && options.UnchangedThreshold is double threshold && first.Width == previous.Width && first.Height == previous.Height
                && Unchanged(first.Resized, previous.First, threshold) && Unchanged((second ?? first).Resized, previous.Second ?? previous.First, threshold))
                return previous.Encoded with { Timestamp = first.Timestamp, Index = first.Index, Reused = true };
            var encoded = await tower.RunAsync(() =>
            {
                int width = vision.OutputLength, columns = 0;
                float[] rows;
                if (IsQwen)
                {
                    rows = new float[vision.TokensFor(first.Width, first.Height) * width];
                    vision.Encode(first.Pixels, first.Width, first.Height, rows, buffers, secondFrame: (second ?? first).Pixels);
                    if (text.PositionComponents > 1) columns = vision.OutputGrid(first.Width, first.Height).Columns;
                }
                else
                {
                    rows = new float[vision.VideoFrameTokens * width];
                    vision.EncodeVideoFrame(first.Pixels, rows, buffers);
                }
                return new EncodedFrame(rows, width, columns, first.Timestamp, first.Index);
            }, cancellation).ConfigureAwait(false);
            if (options.UnchangedThreshold != null) last = (first.Resized, second?.Resized, first.Width, first.Height, encoded);
            return encoded;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>The last unit encoded: its frames' tower inputs and rows (kept only when unchanged frames are skipped).</summary>
    (byte[] First, byte[]? Second, int Width, int Height, EncodedFrame Encoded)? last;

    /// <summary>Whether tower input <paramref name="frame"/> is within <paramref name="threshold"/> levels (mean absolute difference) of <paramref name="encoded"/> (same size).</summary>
    static bool Unchanged(byte[] frame, byte[] encoded, double threshold) => Kernels.SumAbsoluteDifferences(frame, encoded) <= threshold * frame.Length;

    /// <summary>One image in <see cref="MediaPrompt"/>'s layout (llama.cpp's mtmd), as runs: text, entries, Qwen-VL's grid.</summary>
    public async Task<List<RowRun>> EncodeImageAsync(RgbImage image, CancellationToken cancellation)
    {
        await gate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            var prompt = await tower.RunAsync(() => MediaPrompt.Build(text, vision, MediaPrompt.Marker, [image], addSpecial: false, buffers), cancellation).ConfigureAwait(false);
            return prompt.Chunks.Select(chunk => chunk switch
            {
                TextChunk t => RowRun.Text(t.Tokens),
                EmbeddingChunk { GridColumns: > 0 } e when text.PositionComponents > 1 => RowRun.Grid(e.Rows, e.Width, e.GridColumns),
                EmbeddingChunk e => RowRun.Embeddings(e.Rows, e.Width),
                _ => throw new InvalidOperationException($"unknown prompt chunk {chunk.GetType().Name}"),
            }).ToList();
        }
        finally
        {
            gate.Release();
        }
    }
}

/// <summary>
/// A session's video segment on the engine loop: what goes before, between and after frames in the family's format,
/// each frame's timestamp text or temporal position, and what ends the segment (for the session, or only on a
/// question's fork). The formats, each from its model's own processor:
/// <list type="bullet">
/// <item>SmolVLM2 (idefics3 projector; Hugging Face <c>SmolVLMProcessor.expand_text_with_video_tokens</c>): per frame
/// <c>"\nFrame from mm:ss:"</c> (<c>FRAME_TIMESTAMP_MESSAGE</c>, minutes ⌊s/60⌋ and seconds ⌊s⌋ mod 60, two digits or
/// more), <c>&lt;fake_token_around_image&gt;&lt;global-img&gt;</c>, the frame's rows (one tower pass at its size, no
/// slices: <c>_prompt_single_image</c>), <c>&lt;fake_token_around_image&gt;</c>; the segment ends with
/// <c>DEFAULT_MEDIA_OUTTRO</c> <c>"\n\n"</c>. Its <c>DEFAULT_VIDEO_INTRO</c> needs the frame count and duration up
/// front, which a stream does not know, so it is left out (append it as text when you know them).</item>
/// <item>LLaVA-OneVision (mlp projector; Hugging Face <c>LlavaOnevisionModel.get_video_features</c> and its processor's
/// <c>num_frames · 14² + 1</c>): each frame's pooled rows back to back, then <c>v.image_newline</c> once after the
/// video. A live stream has no end, so the newline ends each segment: each <see cref="Session.AppendVideoAsync"/>
/// clip, <see cref="Session.EndVideoSegmentAsync"/>, the next text or image, and — on its fork only — a question.
/// Optional timestamps: <see cref="VideoOptions.TimeInstruction"/>.</item>
/// <item>Qwen2-VL / Qwen2.5-VL (Hugging Face <c>Qwen2VLProcessor</c>, chat template
/// <c>&lt;|vision_start|&gt;&lt;|video_pad|&gt;&lt;|vision_end|&gt;</c>, and <c>get_rope_index</c>): two consecutive
/// frames make one temporal patch (one grid of rows); the segment is <c>&lt;|vision_start|&gt;</c>, the pairs,
/// <c>&lt;|vision_end|&gt;</c>; pair k's rows sit at (s + t_k, s + row, s + column) from the video's first position s,
/// with t_k = k for Qwen2-VL and ⌊(time of the pair's first frame − time of the video's first frame) ·
/// <see cref="VideoOptions.TokensPerSecond"/>⌋ for Qwen2.5-VL — Hugging Face's k · <c>second_per_grid_t</c> ·
/// <c>tokens_per_second</c> for uniformly sampled frames (<c>second_per_grid_t</c> = 2 / fps), here from the stream's
/// own timestamps in exact integer arithmetic (never below the previous pair's). The text after the video goes on at the
/// video's largest position + 1. llama.cpp's mtmd has no video input; its image grid (t fixed) is the T = 1 case of
/// this. An odd last frame is paired with itself, as Hugging Face's processor repeats the last frame; a question asked
/// while a frame waits for its partner sees the segment without it.</item>
/// <item><see cref="VideoFormat.FrameBrackets"/>: see there.</item>
/// </list>
/// A frame's visual rows carry its frame id and the text it brings (separator, timestamp, delimiters)
/// <see cref="FrameIds.TextOf"/> it, so a reducer that drops the frame can drop that text too; the segment's opening
/// and closing text carries none.
/// </summary>
internal sealed class VideoLayout
{
    readonly Tokenizer tokenizer;
    readonly VideoOptions options;
    readonly VisionProjector projector;
    readonly bool native;
    readonly float[]? newline;
    readonly int[] open, separator, close, fake = [];
    bool isOpen;
    int frames, lastTemporal;
    TimeSpan start;
    readonly List<TimeSpan> times = [];

    public VideoLayout(DecoderModel text, VisionModel vision, VideoOptions options)
    {
        tokenizer = text.Tokenizer;
        this.options = options;
        projector = vision.Config.Projector;
        native = options.Format == VideoFormat.Native;
        bool qwen = projector is VisionProjector.Qwen2VL or VisionProjector.Qwen25VL;
        open = separator = close = [];
        if (!native)
        {
            open = Tokens("\n[");
            separator = Tokens(",");
            close = Tokens("]");
        }
        else if (projector == VisionProjector.Idefics3) close = Tokens("\n\n");
        else if (qwen)
        {
            open = Tokens("<|vision_start|>");
            close = Tokens("<|vision_end|>");
        }
        if (native && projector == VisionProjector.Idefics3) fake = Tokens("<fake_token_around_image>");
        if (native && projector == VisionProjector.Mlp) newline = vision.ImageNewline;
    }

    int[] Tokens(string text) => tokenizer.Encode(text, addSpecial: false, parseSpecial: true).ToArray();

    /// <summary>Whether a segment is open (frames went in and nothing has ended it).</summary>
    public bool IsOpen => isOpen;

    /// <summary>The runs of one frame unit (opening the segment when none is open), its visual rows tagged <paramref name="frameId"/>.</summary>
    public List<RowRun> Frame(EncodedFrame frame, int frameId)
    {
        var runs = new List<RowRun>();
        bool first = !isOpen;
        if (first)
        {
            isOpen = true;
            frames = lastTemporal = 0;
            start = frame.Timestamp;
            times.Clear();
            AddText(runs, open);
        }
        else AddText(runs, separator, FrameIds.TextOf(frameId));
        if (options.TimeInstruction) times.Add(frame.Timestamp);
        if (native && projector == VisionProjector.Idefics3)
        {
            AddText(runs, Tokens($"\nFrame from {Clock(frame.Timestamp)}:<fake_token_around_image><global-img>"), FrameIds.TextOf(frameId));
            runs.Add(RowRun.Embeddings(frame.Rows, frame.Width, frameId));
            AddText(runs, fake, FrameIds.TextOf(frameId));
        }
        else if (frame.Columns > 0 && native)
            runs.Add(RowRun.Grid(frame.Rows, frame.Width, frame.Columns, frameId, Temporal(frame.Timestamp), fromVideoStart: true, opensVideo: first));
        else if (frame.Columns > 0) runs.Add(RowRun.Grid(frame.Rows, frame.Width, frame.Columns, frameId));
        else runs.Add(RowRun.Embeddings(frame.Rows, frame.Width, frameId));
        frames++;
        return runs;
    }

    /// <summary>Qwen-VL's temporal position of the next pair, from the video's first position.</summary>
    int Temporal(TimeSpan timestamp)
    {
        if (projector != VisionProjector.Qwen25VL) return frames;
        long ticks = Math.Max(0, (timestamp - start).Ticks);
        long t = ticks * options.TokensPerSecond / TimeSpan.TicksPerSecond;
        return lastTemporal = (int)Math.Clamp(t, lastTemporal, int.MaxValue / 2);
    }

    /// <summary>
    /// The runs that end the open segment (none when none is open): OneVision's newline row (and time instruction),
    /// the closing text. <paramref name="end"/>: the session's own end (the segment is over); otherwise a question's
    /// fork gets these and the session's segment stays open.
    /// </summary>
    public List<RowRun> Close(bool end)
    {
        var runs = new List<RowRun>();
        if (!isOpen) return runs;
        if (newline != null) runs.Add(RowRun.Embeddings(newline, newline.Length));
        AddText(runs, close);
        if (native && projector == VisionProjector.Mlp && options.TimeInstruction) AddText(runs, Tokens(TimeInstruction()));
        if (end) isOpen = false;
        return runs;
    }

    string TimeInstruction()
    {
        var at = string.Join(",", times.Select(t => t.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture) + "s"));
        string length = times[^1].TotalSeconds.ToString("F2", CultureInfo.InvariantCulture);
        return $"\nThe video lasts for {length} seconds, and {times.Count} frames are uniformly sampled from it. These frames are located at {at}.Please answer the following questions related to this video.\n";
    }

    /// <summary>SmolVLM's mm:ss: whole minutes and the whole seconds left, two digits at least.</summary>
    internal static string Clock(TimeSpan timestamp)
    {
        long seconds = Math.Max(0, timestamp.Ticks) / TimeSpan.TicksPerSecond;
        return $"{seconds / 60:00}:{seconds % 60:00}";
    }

    static void AddText(List<RowRun> runs, int[] tokens, int frame = FrameIds.None)
    {
        if (tokens.Length > 0) runs.Add(RowRun.Text(tokens, frame));
    }
}
