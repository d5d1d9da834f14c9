using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using VidKV.Cache;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Video;

namespace VidKV.Cli;

/// <summary>
/// <c>vidkv bench video</c>: <c>decode</c> compares single-threaded sequential decoding, ffmpeg's own threads and
/// <see cref="QuickDecoder"/> on the same sampled frames (interleaved repetitions, medians, identical-frames check);
/// <c>ingest</c> runs a video through a session end to end with per-stage ms per frame, KV and RSS every N frames and
/// the time to the first answer piece of questions asked at given frames. Figures only: nothing is judged.
/// </summary>
static class BenchVideoCommand
{
    public static Command Create()
    {
        var command = new Command("video", "Measure video: decoding (sequential vs ffmpeg threads vs QuickDecoder) and end-to-end ingestion into a session.");
        command.Subcommands.Add(Decode());
        command.Subcommands.Add(Ingest());
        return command;
    }

    static Option<string> Output()
    {
        var output = new Option<string>("--output", "-o") { Description = "Output format: md (table) or json.", DefaultValueFactory = _ => "md" };
        output.AcceptOnlyFromAmong("md", "json");
        return output;
    }

    static JsonSerializerOptions Indented { get; } = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    // ---- decode ----

    /// <summary>One decoding variant's repetitions.</summary>
    sealed record DecodeVariant(string Name, string Description, List<double> Seconds)
    {
        public int Frames { get; set; }
        public string? Hash { get; set; }
        /// <summary>QuickDecoder's chunks (0 for the others).</summary>
        public int Chunks { get; set; }
        public double MedianSeconds => Median(Seconds);
        public double FramesPerSecond => Frames / Math.Max(MedianSeconds, 1e-12);
    }

    static Command Decode()
    {
        var source = new Argument<string>("source") { Description = "Video file (or seekable URL) to decode." };
        var fps = new Option<double>("--fps") { Description = "Frames per second to sample.", DefaultValueFactory = _ => 1.0 };
        var maxFrames = new Option<int?>("--max-frames") { Description = "Stop after this many frames." };
        var workers = new Option<int>("--workers") { Description = "QuickDecoder workers (ffmpeg processes, one thread each).", DefaultValueFactory = _ => 2 };
        var framesAhead = new Option<int>("--frames-ahead") { Description = "QuickDecoder's bound on frames decoded ahead of the consumer.", DefaultValueFactory = _ => QuickDecoderOptions.Default.MaxFramesAhead };
        var chunkFrames = new Option<int[]>("--chunk-frames")
        {
            Description = $"QuickDecoder's smallest chunk in decoded frames; several values (repeat or list) add one QuickDecoder variant each. [default: {QuickDecoderOptions.Default.MinChunkFrames}]",
            AllowMultipleArgumentsPerToken = true,
        };
        var repetitions = new Option<int>("--repetitions", "-r") { Description = "Timed repetitions of each variant, interleaved a,b,c,a,b,c… (after one untimed warm-up pass of each, which also hashes the frames for the identity check).", DefaultValueFactory = _ => 3 };
        var output = Output();
        var command = new Command("decode", "Frames/s of (a) single-threaded sequential decoding (FfmpegSource, 1 decoder thread), (b) ffmpeg's own threads (FfmpegSource, threads 0), "
            + "(c) QuickDecoder with --workers (one variant per --chunk-frames value); medians, ratios c/a and c/b, and whether (b) and (c) delivered the frames of (a) (SHA-256 of pixels and timestamps).")
        {
            source,
        };
        command.With(fps, maxFrames, workers, framesAhead, chunkFrames, repetitions, output);
        command.SetAction(r => RunDecode(r.GetValue(source)!, new FrameSampling { Fps = r.GetValue(fps), MaxFrames = r.GetValue(maxFrames) }, r.GetValue(workers),
            r.GetValue(framesAhead), r.GetValue(chunkFrames) is { Length: > 0 } sizes ? sizes : [QuickDecoderOptions.Default.MinChunkFrames],
            r.GetValue(repetitions), r.GetValue(output) == "json", r.InvocationConfiguration.Output).GetAwaiter().GetResult());
        return command;
    }

    static async Task<int> RunDecode(string source, FrameSampling sampling, int workers, int framesAhead, int[] chunkFrames, int reps, bool json, TextWriter output)
    {
        sampling.Validate();
        if (reps < 1) throw new ArgumentException("-r must be at least 1");
        if (workers < 1) throw new ArgumentException("--workers must be at least 1");
        var quickOptions = chunkFrames.Select(n => new QuickDecoderOptions { Workers = workers, ThreadsPerWorker = 1, MaxFramesAhead = framesAhead, MinChunkFrames = n }).ToArray();
        foreach (var options in quickOptions) options.Validate();
        var log = Console.Error;
        var variants = new[]
        {
            new DecodeVariant("sequential-1-thread", "FfmpegSource, DecoderThreads=1", []),
            new DecodeVariant("ffmpeg-threads", "FfmpegSource, DecoderThreads=0 (ffmpeg's own)", []),
        }.Concat(quickOptions.Select(o => new DecodeVariant(quickOptions.Length == 1 ? "quick-decoder" : $"quick-decoder-c{o.MinChunkFrames}",
            $"QuickDecoder, {workers} workers × 1 thread, chunks ≥ {o.MinChunkFrames} frames, {o.MaxFramesAhead} frames ahead", []))).ToArray();
        IFrameSource Open(int variant) => variant switch
        {
            0 => new FfmpegSource(source, sampling, new FfmpegOptions { DecoderThreads = 1 }),
            1 => new FfmpegSource(source, sampling, new FfmpegOptions { DecoderThreads = 0 }),
            _ => new QuickDecoder(source, sampling, quickOptions[variant - 2]),
        };
        for (int rep = -1; rep < reps; rep++) // -1: the warm-up pass (page cache, JIT)
        {
            for (int v = 0; v < variants.Length; v++)
            {
                await using var frames = Open(v);
                // The untimed warm-up pass hashes what it gets (the identity check); timed passes only take the frames,
                // so a consumer's hashing (about 1 GB/s) is not charged to decoders that keep every core busy.
                using var hash = rep < 0 ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
                int count = 0;
                var clock = Stopwatch.StartNew();
                await foreach (var frame in frames.ReadAsync())
                {
                    if (hash != null)
                    {
                        hash.AppendData(frame.Image.Pixels);
                        hash.AppendData(BitConverter.GetBytes(frame.Timestamp.Ticks));
                        hash.AppendData(BitConverter.GetBytes(frame.Image.Width * 65536L + frame.Image.Height));
                    }
                    count++;
                }
                double seconds = clock.Elapsed.TotalSeconds;
                var x = variants[v];
                if (hash != null) (x.Hash, x.Frames) = (Convert.ToHexStringLower(hash.GetHashAndReset()), count);
                else if (x.Frames != count) throw new InvalidOperationException($"{x.Name} delivered {count} frames, {x.Frames} in the warm-up pass");
                if (frames is QuickDecoder quick) x.Chunks = quick.ChunkCount;
                if (rep >= 0) x.Seconds.Add(seconds);
                log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {(rep < 0 ? "warm-up" : $"rep {rep + 1}")} {x.Name}: {count} frames in {seconds:F2} s"));
            }
        }
        var (a, b, c) = (variants[0], variants[1], variants[2]);
        bool Same(DecodeVariant x) => x.Hash == a.Hash && x.Frames == a.Frames;
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(new
            {
                source = Path.GetFileName(source), fps = sampling.Fps, max_frames = sampling.MaxFrames, workers, frames_ahead = framesAhead, repetitions = reps,
                processors = Environment.ProcessorCount, quick_decoder_chunks = c.Chunks,
                variants = variants.Select(x => new
                {
                    name = x.Name, description = x.Description, frames = x.Frames, chunks = x.Chunks, samples_s = x.Seconds, median_s = x.MedianSeconds,
                    frames_per_second = x.FramesPerSecond, ratio_vs_sequential = x.FramesPerSecond / a.FramesPerSecond,
                    ratio_vs_ffmpeg_threads = x.FramesPerSecond / b.FramesPerSecond, identical_to_sequential = Same(x), sha256 = x.Hash,
                }),
                // The first QuickDecoder variant (the only one unless several --chunk-frames were given).
                ratio_quick_vs_sequential = c.FramesPerSecond / a.FramesPerSecond, ratio_quick_vs_ffmpeg_threads = c.FramesPerSecond / b.FramesPerSecond,
                quick_identical_to_sequential = variants.Skip(2).All(Same), ffmpeg_threads_identical_to_sequential = Same(b),
            }, Indented));
            return 0;
        }
        output.WriteLine("| decoder | frames | chunks | median s | frames/s | × sequential | × ffmpeg threads | identical |");
        output.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        foreach (var x in variants)
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {x.Name} ({x.Description}) | {x.Frames} | {x.Chunks} | {x.MedianSeconds:F3} | {x.FramesPerSecond:F2} | {x.FramesPerSecond / a.FramesPerSecond:F2} | {x.FramesPerSecond / b.FramesPerSecond:F2} | {Same(x)} |"));
        return 0;
    }

    // ---- ingest ----

    static Command Ingest()
    {
        var source = new Argument<string>("source") { Description = "Video file, URL or camera:/dev/videoN to ingest." };
        var model = CommonOptions.Model(required: true);
        var mmproj = new Option<string>("--mmproj") { Description = "Vision projector (mmproj GGUF) paired with -m.", Required = true };
        var fps = new Option<double>("--fps") { Description = "Frames per second to sample.", DefaultValueFactory = _ => 1.0 };
        var maxFrames = new Option<int?>("--max-frames") { Description = "Stop after this many frames." };
        var policy = new Option<string?>("--policy") { Description = PolicyDocs.SpecHelp("KV policy spec; default full (grows with the video).") };
        var budget = new Option<int?>("--budget") { Description = "Token budget per KV head for the policy." };
        var askAt = new Option<int[]>("--ask-at") { Description = "Ask a question after this many frames and time its first answer piece (TTFT); repeatable.", AllowMultipleArgumentsPerToken = true };
        var question = new Option<string>("--question") { Description = "The question asked at each --ask-at frame.", DefaultValueFactory = _ => "What is happening in the video?" };
        var every = new Option<int>("--every") { Description = "A row of hot/cold KV bytes and RSS every this many frames.", DefaultValueFactory = _ => 100 };
        var workers = new Option<int>("--workers") { Description = "0: sequential decoding (FfmpegSource, ffmpeg's threads); N > 0: QuickDecoder with N workers.", DefaultValueFactory = _ => 0 };
        var unchanged = CommonOptions.UnchangedThreshold();
        var serial = new Option<bool>("--serial") { Description = "Frames go in one at a time, each through every stage before the next is read, so the stages' ms per frame add up, and each row splits prefill into the text model's phases and the KV cache's stages (kernel, select, recall, policy update) (default: as watch runs them, through the session's video path — the source decodes ahead while a frame is encoded and prefilled — and questions are asked while ingestion goes on; prefill is not split out)." };
        var coldDir = CommonOptions.ColdDir();
        var coldMax = CommonOptions.ColdMax();
        var threads = CommonOptions.Threads();
        var output = Output();
        var command = new Command("ingest", "End-to-end frames/s of a video into a session, ms per frame per stage (decode wait, preprocess, encode; prefill with --serial), "
            + "hot/cold KV and RSS every --every frames, TTFT of a question at each --ask-at frame. Frames go in as watch takes them unless --serial. "
            + "Quick run: vidkv model random --shape tiny-idefics3 -o DIR, then vidkv bench video ingest CLIP -m DIR/model.gguf --mmproj DIR/mmproj.gguf --max-frames 20 --every 5 --ask-at 10.")
        {
            source,
        };
        var visionExact = CommonOptions.VisionExact();
        command.With(model, mmproj, fps, maxFrames, policy, budget, coldDir, coldMax, askAt, question, every, workers, serial, unchanged, visionExact, threads, output);
        command.SetAction(r => RunIngest(r.GetValue(source)!, r.GetValue(model)!, r.GetValue(mmproj)!, new FrameSampling { Fps = r.GetValue(fps), MaxFrames = r.GetValue(maxFrames) },
            CommonOptions.WithColdTier(new KvCacheConfig { Default = r.GetValue(policy) ?? "full", Budget = r.GetValue(budget) }, r.GetValue(coldDir), r.GetValue(coldMax)), r.GetValue(askAt) ?? [], r.GetValue(question)!, r.GetValue(every), r.GetValue(workers), r.GetValue(serial), CommonOptions.CheckUnchangedThreshold(r.GetValue(unchanged)), r.GetValue(visionExact), r.GetValue(threads),
            r.GetValue(output) == "json", r.InvocationConfiguration.Output).GetAwaiter().GetResult());
        return command;
    }

    static async Task<int> RunIngest(string source, string modelPath, string mmprojPath, FrameSampling sampling, KvCacheConfig kv, int[] askAt,
        string question, int every, int workers, bool serial, double? unchangedThreshold, bool visionExact, int threads, bool json, TextWriter output)
    {
        sampling.Validate();
        if (every < 1) throw new ArgumentException("--every must be at least 1");
        if (workers < 0) throw new ArgumentException("--workers must be 0 or more");
        if (askAt.Any(n => n < 1)) throw new ArgumentException("--ask-at takes frame counts ≥ 1");
        Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, threads));
        var log = Console.Error;
        kv.ValidateSpecs();
        using var text = ModelLoader.Load(modelPath);
        using var vision = VisionModel.Load(mmprojPath, visionExact);
        await using var frames = workers > 0 ? (IFrameSource)new QuickDecoder(source, sampling, new QuickDecoderOptions { Workers = workers })
            : new FfmpegSource(source, sampling, new FfmpegOptions { ReuseFrameBuffers = true }); // frames go to the session and nowhere else
        await using var engine = new InferenceEngine(text, new EngineOptions { Kv = kv, Video = new VideoOptions { UnchangedThreshold = unchangedThreshold } }, vision);
        await using var session = engine.CreateSession();
        var asks = new SortedSet<int>(askAt);
        var rows = new List<object>();
        var ttfts = new List<object>();
        double decodeMs = 0, appendMs = 0;
        int count = 0;
        // Each row also times the frames since the row before (frames/s and ms per frame per stage over that window), so
        // a cost that grows with the stream shows where it grows.
        // Overlapped, a window's time is the wall clock since the row before (stages run side by side: their ms per frame
        // are busy times and do not add up; prefill is not split out); serial, it is the window's decode + append.
        var clock = Stopwatch.StartNew();
        double windowDecode = 0, windowAppend = 0, windowPreprocess = 0, windowEncode = 0, windowWall = 0;
        var windowForward = engine.Times; // the engine loop's forward passes (every session's)
        var windowKv = session.KvTimes;
        // The text model's forward phases per frame since the row before (serial only: overlapped, a question's decode
        // would land in a window's phases too); the KV cache's policy work shows under attention.
        Dictionary<string, double>? PrefillPhases(in Models.ForwardTimes before, int frames)
        {
            if (!serial) return null;
            var now = engine.Times;
            double tokensPerFrame = (double)(now.Tokens - before.Tokens) / frames;
            var phases = now.MillisecondsPerToken(before).ToDictionary(p => p.Key, p => p.Value * tokensPerFrame);
            // Attention's own stages: the kernel, and the policies' choosing, recalls and updates (eviction, compression).
            var kv = session.KvTimes;
            phases["kv_select"] = Cache.KvPhaseTimes.Milliseconds(kv.Select - windowKv.Select) / frames;
            phases["kv_recall"] = Cache.KvPhaseTimes.Milliseconds(kv.Recall - windowKv.Recall) / frames;
            phases["kv_kernel"] = Cache.KvPhaseTimes.Milliseconds(kv.Attention - windowKv.Attention) / frames;
            phases["kv_update"] = Cache.KvPhaseTimes.Milliseconds(kv.Update - windowKv.Update) / frames;
            return phases;
        }
        object Row(int n)
        {
            var memory = engine.Memory;
            double preprocess = session.PreprocessTime.TotalMilliseconds - windowPreprocess, encode = session.EncodeTime.TotalMilliseconds - windowEncode;
            double decode = decodeMs - windowDecode, append = appendMs - windowAppend, wall = clock.Elapsed.TotalMilliseconds;
            double window = serial ? decode + append : wall - windowWall;
            int frames = every;
            var row = new
            {
                frames = n, frames_reused = session.ReusedFrames, hot_kv_bytes = memory.HotBytes, cold_kv_bytes = memory.ColdBytes, cold_dropped_rows = memory.ColdDroppedRows, rss_bytes = Environment.WorkingSet,
                session_rows = session.Length, gc_gen2_collections = GC.CollectionCount(2), gc_pause_ms = GC.GetTotalPauseDuration().TotalMilliseconds,
                managed_heap_bytes = GC.GetGCMemoryInfo().HeapSizeBytes, window_frames_per_second = frames / Math.Max(window / 1000, 1e-12),
                window_ms_per_frame = new
                {
                    decode_wait = decode / frames, preprocess = preprocess / frames, encode = encode / frames,
                    prefill = serial ? Math.Max(0, append - preprocess - encode) / frames : (double?)null,
                },
                window_prefill_ms_per_frame = PrefillPhases(windowForward, frames),
            };
            windowForward = engine.Times;
            windowKv = session.KvTimes;
            (windowDecode, windowAppend, windowPreprocess, windowEncode, windowWall) = (decodeMs, appendMs, session.PreprocessTime.TotalMilliseconds, session.EncodeTime.TotalMilliseconds, wall);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  frame {n}: {row.window_frames_per_second:F2} frames/s (last {frames}; encode {row.window_ms_per_frame.encode:F0} ms{(serial ? $", prefill {row.window_ms_per_frame.prefill:F0} ms" : "")} per frame), KV hot {memory.HotBytes / 1048576.0:F1} MiB cold {memory.ColdBytes / 1048576.0:F1} MiB, RSS {row.rss_bytes / 1048576.0:F0} MiB, GC pauses {row.gc_pause_ms / 1000:F1} s"));
            return row;
        }
        async Task<double> Ask(int frame)
        {
            long q = Stopwatch.GetTimestamp();
            double? first = null;
            await foreach (var piece in session.AskAsync($"\n{question}\n", new AskOptions { MaxTokens = 4 }))
            {
                first = Stopwatch.GetElapsedTime(q).TotalMilliseconds;
                break;
            }
            first ??= Stopwatch.GetElapsedTime(q).TotalMilliseconds;
            lock (ttfts) ttfts.Add(new { frame, ttft_ms = first.Value, session_rows = session.Length });
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  question at frame {frame}: first piece after {first.Value:F1} ms"));
            return first.Value;
        }
        var total = Stopwatch.StartNew();
        if (!serial)
        {
            // As watch runs it, through AppendVideoAsync (the source decodes ahead); rows and questions at the frames'
            // arrival, questions while ingestion goes on.
            var asking = new List<Task>();
            var progress = new SyncProgress(p =>
            {
                count = p.Frames;
                if (count % every == 0) rows.Add(Row(count));
                if (asks.Contains(count)) asking.Add(Ask(count));
            });
            async IAsyncEnumerable<VideoFrame> Timed()
            {
                await using var e = frames.ReadAsync().GetAsyncEnumerator();
                while (true)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    bool more = await e.MoveNextAsync();
                    decodeMs += Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                    if (!more) yield break;
                    yield return e.Current;
                }
            }
            await session.AppendVideoAsync(Timed(), progress);
            appendMs = total.Elapsed.TotalMilliseconds - decodeMs;
            await Task.WhenAll(asking);
        }
        else await using (var e = frames.ReadAsync().GetAsyncEnumerator())
        {
            while (true)
            {
                long t0 = Stopwatch.GetTimestamp();
                if (!await e.MoveNextAsync()) break;
                decodeMs += Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                long t1 = Stopwatch.GetTimestamp();
                await session.AppendFrameAsync(e.Current);
                appendMs += Stopwatch.GetElapsedTime(t1).TotalMilliseconds;
                count++;
                if (count % every == 0)
                {
                    rows.Add(Row(count));
                }
                // Paused ingestion: the question runs alone, so its time is the answer's own (not shared with frames).
                if (asks.Contains(count)) await Ask(count);
            }
        }
        double seconds = total.Elapsed.TotalSeconds;
        // The ask time is in the wall clock; end-to-end frames/s counts decode + append only.
        double ingestMs = decodeMs + appendMs;
        double preprocessMs = session.PreprocessTime.TotalMilliseconds, encodeMs = session.EncodeTime.TotalMilliseconds;
        double? prefillMs = serial ? Math.Max(0, appendMs - preprocessMs - encodeMs) : null;
        double PerFrame(double ms) => count == 0 ? 0 : ms / count;
        double? PerFrameOrNull(double? ms) => ms is double v ? PerFrame(v) : null;
        var result = new
        {
            source = Path.GetFileName(source), model = Path.GetFileName(modelPath), mmproj = Path.GetFileName(mmprojPath), projector = vision.Config.Projector.ToString(),
            kv_policy = kv.Default, budget = kv.Budget, cold_max_bytes = kv.ColdPath == null ? (long?)null : kv.MaxColdBytes, fps = sampling.Fps, decoder = workers > 0 ? $"QuickDecoder, {workers} workers" : "FfmpegSource", threads,
            stages = serial ? "serial" : "overlapped", unchanged_threshold = unchangedThreshold,
            frames = count, frames_reused = session.ReusedFrames, wall_s = seconds, frames_per_second = count / Math.Max(ingestMs / 1000, 1e-12),
            ms_per_frame = new { decode_wait = PerFrame(decodeMs), preprocess = PerFrame(preprocessMs), encode = PerFrame(encodeMs), prefill = PerFrameOrNull(prefillMs), total = PerFrame(ingestMs) },
            every, rows, ttft = ttfts, peak_rss_bytes = Process.GetCurrentProcess().PeakWorkingSet64, kernels = Tensors.MachineLimits.KernelSet,
        };
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(result, Indented));
            return 0;
        }
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{count} frames{(unchangedThreshold != null ? $" ({session.ReusedFrames} unchanged: tokens reused)" : "")}, {result.frames_per_second:F2} frames/s end to end ({result.stages}); ms per frame: decode wait {PerFrame(decodeMs):F1}, preprocess {PerFrame(preprocessMs):F1}, encode {PerFrame(encodeMs):F1}{(prefillMs is double p ? $", prefill {PerFrame(p):F1}" : "")}"));
        output.WriteLine();
        output.WriteLine("| frames | hot KV MiB | cold KV MiB | RSS MiB | session rows |");
        output.WriteLine("| ---: | ---: | ---: | ---: | ---: |");
        foreach (var row in rows.Select(x => JsonSerializer.SerializeToElement(x)))
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {row.GetProperty("frames").GetInt32()} | {row.GetProperty("hot_kv_bytes").GetInt64() / 1048576.0:F2} | {row.GetProperty("cold_kv_bytes").GetInt64() / 1048576.0:F2} | {row.GetProperty("rss_bytes").GetInt64() / 1048576.0:F0} | {row.GetProperty("session_rows").GetInt32()} |"));
        if (ttfts.Count > 0)
        {
            output.WriteLine();
            output.WriteLine("| asked at frame | TTFT ms | session rows |");
            output.WriteLine("| ---: | ---: | ---: |");
            foreach (var t in ttfts.Select(x => JsonSerializer.SerializeToElement(x)))
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {t.GetProperty("frame").GetInt32()} | {t.GetProperty("ttft_ms").GetDouble():F1} | {t.GetProperty("session_rows").GetInt32()} |"));
        }
        return 0;
    }

    /// <summary>Calls its action on the reporting thread (Progress&lt;T&gt; would post it to the thread pool, out of order with the frames).</summary>
    sealed class SyncProgress(Action<VideoProgress> report) : IProgress<VideoProgress>
    {
        public void Report(VideoProgress value) => report(value);
    }

    static double Median(List<double> values)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.Order().ToList();
        int m = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
    }
}
