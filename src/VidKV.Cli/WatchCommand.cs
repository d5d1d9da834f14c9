using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Video;
using VidKV.World;

namespace VidKV.Cli;

/// <summary>
/// <c>vidkv watch</c>: a vision-language model watches a video (file, URL, camera, image folder) frame by frame into a
/// bounded session; questions typed while it plays (or given with <c>--ask</c>) are answered on forks as ingestion
/// goes on, and with <c>--proactive</c> the model comments on its own. Without <c>-m</c> the built-in model watches
/// (<see cref="BuiltInModel"/>: a tiny VLM trained here on the generated world); with no source either, it watches the
/// world demo (<see cref="WorldDemo"/>), commenting on its own, then answers the demo's questions, each shown beside
/// the answer the world says is right.
/// </summary>
static class WatchCommand
{
    public static Command Create()
    {
        var source = new Argument<string?>("source") { Description = "Video file, URL (rtsp://, http://, HLS…), camera:/dev/videoN, or an image folder. None: the demo, a generated world the built-in model comments on and answers questions about.", Arity = ArgumentArity.ZeroOrOne };
        var model = CommonOptions.Model(required: false, CommonOptions.BuiltInModelText);
        var mmproj = new Option<string?>("--mmproj") { Description = "Vision projector (mmproj GGUF) paired with -m (not needed for a Hugging Face VLM folder)." };
        var fps = new Option<double>("--fps") { Description = "Frames per second to sample from the stream.", DefaultValueFactory = _ => 1.0 };
        var maxFrames = new Option<int?>("--max-frames") { Description = "Stop after this many frames." };
        var start = new Option<double?>("--start") { Description = "Start at this stream time (seconds)." };
        var end = new Option<double?>("--end") { Description = "Stop at this stream time (seconds)." };
        var policy = new Option<string?>("--policy") { Description = PolicyDocs.SpecHelp("KV policy spec that keeps the session bounded (e.g. quickprefill+freekv); default full (grows with the video).") };
        var budget = new Option<int?>("--budget") { Description = "Token budget per KV head for the policy." };
        var ask = new Option<string[]>("--ask") { Description = "A question asked once the video has been watched (repeatable); questions typed on stdin are asked while it plays." };
        var proactive = new Option<bool>("--proactive") { Description = "Let the model comment on its own (VideoLLM-online): after each frame, when p(silence token) < --threshold." };
        var silence = new Option<string>("--silence-token") { Description = "The token meaning \"no comment\" for --proactive.", DefaultValueFactory = _ => "," };
        var threshold = new Option<float>("--threshold") { Description = "--proactive speaks when p(silence) falls below this.", DefaultValueFactory = _ => 0.725f };
        var brackets = new Option<bool>("--brackets") { Description = "Lay frames out as VideoLLM-online's [ frame, frame, … ] instead of the model family's own video format." };
        var predict = new Option<int>("--n-predict", "-n") { Description = "Most tokens per answer.", DefaultValueFactory = _ => 128 };
        var unchanged = CommonOptions.UnchangedThreshold();
        var coldDir = CommonOptions.ColdDir();
        var coldMax = CommonOptions.ColdMax();
        var positions = CommonOptions.Positions();
        var visionExact = CommonOptions.VisionExact();
        var threads = CommonOptions.Threads();
        var command = new Command("watch", "Watch a video with a vision-language model: bounded memory, questions while it plays, comments on its own.")
        {
            source,
        };
        command.With(model, mmproj, fps, maxFrames, start, end, policy, budget, positions, coldDir, coldMax, ask, proactive, silence, threshold, brackets, unchanged, predict, visionExact, threads);
        command.SetAction(r => Run(r.InvocationConfiguration.Output, r.InvocationConfiguration.Error, r.GetValue(source), r.GetValue(model), r.GetValue(mmproj), new FrameSampling
        {
            Fps = r.GetValue(fps), MaxFrames = r.GetValue(maxFrames),
            Start = r.GetValue(start) is double s ? TimeSpan.FromSeconds(s) : null, End = r.GetValue(end) is double e ? TimeSpan.FromSeconds(e) : null,
        }, CommonOptions.WithColdTier(new KvCacheConfig { Default = r.GetValue(policy) ?? "full", Budget = r.GetValue(budget), Positions = CommonOptions.ParsePositions(r.GetValue(positions)) }, r.GetValue(coldDir), r.GetValue(coldMax)), r.GetValue(ask) ?? [], r.GetValue(proactive) ? new ProactiveOptions { SilenceToken = r.GetValue(silence)!, Threshold = r.GetValue(threshold) } : null,
            new VideoOptions { Format = r.GetValue(brackets) ? VideoFormat.FrameBrackets : VideoFormat.Native, UnchangedThreshold = CommonOptions.CheckUnchangedThreshold(r.GetValue(unchanged)) },
            r.GetValue(predict), r.GetValue(visionExact), r.GetValue(threads)).GetAwaiter().GetResult());
        return command;
    }

    static async Task<int> Run(TextWriter output, TextWriter log, string? source, string? modelPath, string? mmprojPath, FrameSampling sampling, KvCacheConfig kv,
        string[] questions, ProactiveOptions? proactive, VideoOptions video, int maxTokens, bool visionExact, int threads)
    {
        Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, threads));
        sampling.Validate();
        if (modelPath == null)
        {
            (modelPath, mmprojPath) = BuiltInModel.Or(null, mmprojPath);
            log.WriteLine("note: no -m given, so the built-in model watches: a 4.4M-parameter VLM trained here on generated videos of shapes; it knows nothing else.");
        }
        mmprojPath ??= Directory.Exists(modelPath) ? modelPath : throw new ArgumentException("watch needs --mmproj: the vision projector (mmproj GGUF) that goes with -m");
        // The demo: the world's own video, commented on as it plays, then its questions, each beside the world's answer.
        WorldStream? demo = null;
        IReadOnlyList<WorldQuestion> demoQuestions = [];
        if (source == null)
        {
            source = await WorldDemo.EnsureAsync(log: log);
            demo = WorldDemo.Stream();
            proactive ??= new ProactiveOptions();
            if (questions.Length == 0) demoQuestions = WorldDemo.Questions(demo);
            sampling = sampling with { Fps = 1 };
        }

        kv.ValidateSpecs();
        using var text = ModelLoader.Load(modelPath);
        using var vision = VisionModel.Load(mmprojPath, visionExact);
        await using var frames = Directory.Exists(source) ? (IFrameSource)new ImageFolderSource(source, sampling.Fps ?? 1, sampling)
            : new FfmpegSource(source, sampling, new FfmpegOptions { ReuseFrameBuffers = true }); // frames go to the session and nowhere else
        await using var engine = new InferenceEngine(text, new EngineOptions { Kv = kv, Video = video }, vision);
        await using var session = engine.CreateSession();
        log.WriteLine($"watching {frames.Name} with {Path.GetFileName(modelPath)} + {Path.GetFileName(mmprojPath)} ({vision.Config.Projector}), KV policy {kv.Default}");

        var display = WatchDisplay.For(output, log);
        var clock = Stopwatch.StartNew();
        using var stop = new CancellationTokenSource();
        var typed = Console.IsInputRedirected ? Task.CompletedTask : Task.Run(() => AnswerTypedQuestions(display, session, maxTokens, stop.Token));
        int count = 0;
        void Status(VideoFrame frame)
        {
            count++;
            var store = engine.Store;
            double rate = count / Math.Max(clock.Elapsed.TotalSeconds, 1e-9);
            display.Status(string.Create(CultureInfo.InvariantCulture,
                $"  frame {count} at {frame.Timestamp:mm\\:ss\\.f}: {rate:F2} frames/s, KV hot {store.HotBytes / 1048576.0:F1} MiB cold {store.ColdBytes / 1048576.0:F1} MiB, RSS {Environment.WorkingSet / 1048576.0:F0} MiB"),
                frame.Timestamp.TotalSeconds);
        }
        frames.FrameSkipped += skipped => display.Note(string.Create(CultureInfo.InvariantCulture,
            $"  skipped a frame{(skipped.Timestamp is TimeSpan at ? $" at {at:mm\\:ss\\.f}" : "")} (after {skipped.Index} frames): {skipped.Reason}; watching goes on"));
        await display.RunAsync(async () =>
        {
            if (proactive != null)
            {
                await foreach (var comment in session.WatchAsync(Tap(frames.ReadAsync(stop.Token), Status), proactive, stop.Token))
                    display.Print($"[{comment.Timestamp:mm\\:ss}] {comment.Text.Trim()}{(demo == null ? "" : Judge(comment.Text.Trim(), demo.Narration(Tick(demo, comment.Timestamp))))}");
            }
            else await session.AppendVideoAsync(Tap(frames.ReadAsync(stop.Token), Status), null, stop.Token);
        }, await Length(frames, sampling));
        foreach (string question in questions) await Answer(display, session, question, maxTokens, stop.Token);
        foreach (var question in demoQuestions)
            display.Print(Judge((await Answer(display, session, question.Question, maxTokens, stop.Token)).Trim(), question.Answer).Trim());
        stop.Cancel();
        log.WriteLine($"watched {count} frames in {clock.Elapsed.TotalSeconds:F1} s{(video.UnchangedThreshold != null ? $" ({session.ReusedFrames} unchanged: tokens reused)" : "")}");
        return 0;
    }

    /// <summary>Seconds of stream the watch will cover when a file says (for the progress bar); null for a live stream or a camera.</summary>
    static async Task<double?> Length(IFrameSource frames, FrameSampling sampling)
    {
        if (frames is not FfmpegSource file || (await file.ProbeAsync().ConfigureAwait(false)).Duration is not TimeSpan duration) return null;
        var end = sampling.End is TimeSpan e && e < duration ? e : duration;
        return Math.Max(0, (end - (sampling.Start ?? TimeSpan.Zero)).TotalSeconds);
    }

    static async IAsyncEnumerable<VideoFrame> Tap(IAsyncEnumerable<VideoFrame> frames, Action<VideoFrame> seen)
    {
        await foreach (var frame in frames)
        {
            yield return frame;
            seen(frame);
        }
    }

    static async Task AnswerTypedQuestions(WatchDisplay display, Session session, int maxTokens, CancellationToken cancellation)
    {
        while (!cancellation.IsCancellationRequested && await Console.In.ReadLineAsync(cancellation) is { } line)
            if (line.Trim().Length > 0) await Answer(display, session, line.Trim(), maxTokens, cancellation);
    }

    static Task<string> Answer(WatchDisplay display, Session session, string question, int maxTokens, CancellationToken cancellation) =>
        display.AnswerAsync(question, session.AskAsync($"\n{question}\n", new AskOptions { MaxTokens = maxTokens }, cancellation));

    /// <summary>The demo's tick of a frame time (one tick per second).</summary>
    static int Tick(WorldStream world, TimeSpan time) => Math.Clamp((int)Math.Round(time.TotalSeconds), 0, world.TickCount - 1);

    /// <summary>What the world says of something said: "  ✓" when it is the world's text (a narration without its period, as answers give it, counts), else the world's text.</summary>
    static string Judge(string said, string? truth) =>
        truth == null ? "   ✗ (nothing happened)"
        : string.Equals(said.TrimEnd('.'), truth.TrimEnd('.'), StringComparison.Ordinal) ? "   ✓" : $"   ✗ (the world: {truth})";
}
