using System.Diagnostics;
using System.Text;
using VidKV.Formats;
using VidKV.Video;

namespace VidKV.Tests;

/// <summary>
/// Small generated videos (ffmpeg's testsrc2 at 160×90, 3 s at 25 fps unless said otherwise), written once per test
/// run into a temporary folder: H.264 with GOPs of 1, 12 and 50 frames, VP9 with GOPs of 12 and 50, a variable-frame-rate
/// H.264 stream (frame n at 40·n + 10·(n mod 3) ms), an MJPEG stream with one frame overwritten by zeros, and a
/// truncated MP4.
/// </summary>
public sealed class GeneratedVideos : IDisposable
{
    public string Folder { get; } = Directory.CreateTempSubdirectory("vidkv-video-").FullName;

    public GeneratedVideos()
    {
        const string source = "testsrc2=size=160x90:rate=25:duration=3";
        var jobs = new List<(string Name, string Arguments)>
        {
            ("h264-g1.mp4", $"-f lavfi -i {source} -c:v libx264 -preset ultrafast -g 1 -pix_fmt yuv420p"),
            ("h264-g12.mp4", $"-f lavfi -i {source} -c:v libx264 -preset veryfast -g 12 -keyint_min 12 -pix_fmt yuv420p"),
            ("h264-g50.mp4", $"-f lavfi -i {source} -c:v libx264 -preset veryfast -g 50 -keyint_min 50 -pix_fmt yuv420p"),
            ("vp9-g12.webm", $"-f lavfi -i {source} -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 300k -g 12 -pix_fmt yuv420p"),
            ("vp9-g50.webm", $"-f lavfi -i {source} -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 300k -g 50 -pix_fmt yuv420p"),
            ("vfr.mkv", $"-f lavfi -i {source} -vf settb=1/1000,setpts='N*40+mod(N,3)*10' -fps_mode vfr -enc_time_base 1/1000 -c:v libx264 -preset veryfast -g 12 -pix_fmt yuv420p"),
            ("mjpeg.mkv", "-f lavfi -i testsrc2=size=160x90:rate=10:duration=1 -c:v mjpeg -q:v 5 -pix_fmt yuvj420p"),
        };
        Parallel.ForEach(jobs, new ParallelOptions { MaxDegreeOfParallelism = 2 }, job => Ffmpeg($"{job.Arguments} -y {Path(job.Name)}"));
        CorruptFifthJpeg(Path("mjpeg.mkv"), Path("mjpeg-corrupt.mkv"));
        byte[] whole = File.ReadAllBytes(Path("h264-g12.mp4"));
        File.WriteAllBytes(Path("truncated.mp4"), whole[..(whole.Length / 2)]);
        File.WriteAllBytes(Path("empty.mp4"), []);
    }

    public string Path(string name) => System.IO.Path.Combine(Folder, name);

    /// <summary>Zeroes the fifth JPEG of an MJPEG file, from its start-of-image marker to its end-of-image marker, so
    /// the container stays intact and that one packet holds no image.</summary>
    internal static void CorruptFifthJpeg(string from, string to)
    {
        byte[] data = File.ReadAllBytes(from);
        int found = 0, start = -1;
        for (int i = 0; i + 2 < data.Length; i++)
            if (data[i] == 0xFF && data[i + 1] == 0xD8 && data[i + 2] == 0xFF && ++found == 5) { start = i; break; }
        Assert.True(start > 0, "the MJPEG file has fewer than five images");
        int end = start + 2;
        while (!(data[end] == 0xFF && data[end + 1] == 0xD9)) end++;
        Array.Clear(data, start, end + 2 - start);
        File.WriteAllBytes(to, data);
    }

    /// <summary>Runs ffmpeg with <paramref name="arguments"/> (split on spaces outside single quotes) and returns its output.</summary>
    public static byte[] Ffmpeg(string arguments, string tool = "ffmpeg")
    {
        var info = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in Split(arguments)) info.ArgumentList.Add(argument);
        info.ArgumentList.Insert(0, "-hide_banner");
        info.ArgumentList.Insert(1, "-loglevel");
        info.ArgumentList.Insert(2, "error");
        using var process = Process.Start(info)!;
        var errors = process.StandardError.ReadToEndAsync();
        using var output = new MemoryStream();
        process.StandardOutput.BaseStream.CopyTo(output);
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"{tool} {arguments} failed: {errors.Result}");
        return output.ToArray();
    }

    static IEnumerable<string> Split(string arguments)
    {
        var current = new StringBuilder();
        bool quoted = false;
        foreach (char c in arguments)
        {
            if (c == '\'') { quoted = !quoted; current.Append(c); }
            else if (c == ' ' && !quoted) { if (current.Length > 0) yield return current.ToString(); current.Clear(); }
            else current.Append(c);
        }
        if (current.Length > 0) yield return current.ToString();
    }

    public void Dispose()
    {
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// Video sources (issue 16 items 1–3): QuickDecoder equals the sequential pass byte for byte with 1, 2 and 3 workers
/// on H.264 and VP9 of several GOP sizes and on variable frame rate; sampling by fps, frame limit, start and end with the
/// streams' own timestamps; size limits; image folders; pushed frames with backpressure; and the one-line errors of
/// bad input.
/// </summary>
public class VideoSourceTests(GeneratedVideos videos) : IClassFixture<GeneratedVideos>
{
    static async Task<List<VideoFrame>> ReadAll(IFrameSource source)
    {
        var frames = new List<VideoFrame>();
        await foreach (var frame in source.ReadAsync()) frames.Add(frame);
        return frames;
    }

    static void AssertSameFrames(IReadOnlyList<VideoFrame> expected, IReadOnlyList<VideoFrame> actual, string what)
    {
        Assert.True(expected.Count == actual.Count, $"{what}: {actual.Count} frames, sequential has {expected.Count}");
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.True(expected[i].Timestamp == actual[i].Timestamp, $"{what}: frame {i} at {actual[i].Timestamp}, sequential {expected[i].Timestamp}");
            Assert.Equal(expected[i].Index, actual[i].Index);
            Assert.Equal((expected[i].Image.Width, expected[i].Image.Height), (actual[i].Image.Width, actual[i].Image.Height));
            Assert.True(expected[i].Image.Pixels.AsSpan().SequenceEqual(actual[i].Image.Pixels), $"{what}: frame {i} ({expected[i].Timestamp}) differs in its pixels");
        }
    }

    public static TheoryData<string, string> ParallelCases()
    {
        var cases = new TheoryData<string, string>();
        foreach (string video in new[] { "h264-g1.mp4", "h264-g12.mp4", "h264-g50.mp4", "vp9-g12.webm", "vp9-g50.webm", "vfr.mkv" })
            foreach (string sampling in new[] { "all", "fps5-range" })
                cases.Add(video, sampling);
        return cases;
    }

    static FrameSampling SamplingNamed(string name) => name switch
    {
        "all" => FrameSampling.All,
        "fps5-range" => new FrameSampling { Fps = 5, Start = TimeSpan.FromSeconds(0.3), End = TimeSpan.FromSeconds(2.7) },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(ParallelCases))]
    public async Task QuickDecoderEqualsSequentialDecoding(string video, string samplingName)
    {
        var sampling = SamplingNamed(samplingName);
        var sequential = await ReadAll(new FfmpegSource(videos.Path(video), sampling, new FfmpegOptions { DecoderThreads = 1 }));
        Assert.NotEmpty(sequential);
        Assert.Equal(Enumerable.Range(0, sequential.Count).Select(i => (long)i), sequential.Select(f => f.Index));
        foreach (int workers in new[] { 1, 2, 3 })
        {
            var decoder = new QuickDecoder(videos.Path(video), sampling, new QuickDecoderOptions { Workers = workers, MinChunkFrames = 12 });
            var parallel = await ReadAll(decoder);
            Assert.False(decoder.FellBack);
            if (video != "h264-g50.mp4" && video != "vp9-g50.webm") Assert.True(decoder.ChunkCount > 1, $"{video}: one chunk only");
            AssertSameFrames(sequential, parallel, $"{video} {samplingName} with {workers} workers");
        }
    }

    /// <summary>
    /// Sampling 1 frame/s of a 50-frame GOP at 25 fps wants frames 0, 25 and 50: merging the second GOP into the first
    /// chunk would decode the 24 frames between 25 and the keyframe at 50 only to get there, so by default (a gap of
    /// at most 12) the second GOP is a chunk of its own; allowing a gap of 30 merges them. The frames are the same.
    /// </summary>
    [Theory]
    [InlineData(12, 2)]
    [InlineData(30, 1)]
    public async Task AWideGapBetweenWantedFramesStartsANewChunk(int gap, int chunks)
    {
        var sampling = new FrameSampling { Fps = 1 };
        var sequential = await ReadAll(new FfmpegSource(videos.Path("h264-g50.mp4"), sampling));
        Assert.Equal([TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2)], sequential.Select(f => f.Timestamp));
        var decoder = new QuickDecoder(videos.Path("h264-g50.mp4"), sampling, new QuickDecoderOptions { Workers = 2, MergeGapFrames = gap });
        AssertSameFrames(sequential, await ReadAll(decoder), $"gap {gap}");
        Assert.Equal(chunks, decoder.ChunkCount);
    }

    /// <summary>
    /// With <see cref="FfmpegOptions.ReuseFrameBuffers"/>, a frame handed back (<see cref="VideoFrame.Recycle"/>) is
    /// decoded into again: 75 frames read one at a time go through one buffer, with the same pixels as without; frames
    /// not handed back each get their own.
    /// </summary>
    [Fact]
    public async Task RecycledFramesAreDecodedIntoAgain()
    {
        var fresh = await ReadAll(new FfmpegSource(videos.Path("h264-g12.mp4")));
        var buffers = new HashSet<byte[]>(ReferenceEqualityComparer.Instance);
        var pixels = new List<byte[]>();
        await foreach (var frame in new FfmpegSource(videos.Path("h264-g12.mp4"), options: new FfmpegOptions { ReuseFrameBuffers = true }).ReadAsync())
        {
            buffers.Add(frame.Image.Pixels);
            pixels.Add((byte[])frame.Image.Pixels.Clone());
            frame.Recycle();
        }
        Assert.Single(buffers);
        Assert.Equal(fresh.Select(f => f.Image.Pixels), pixels);
        var kept = await ReadAll(new FfmpegSource(videos.Path("h264-g12.mp4"), options: new FfmpegOptions { ReuseFrameBuffers = true }));
        Assert.Equal(75, kept.Select(f => f.Image.Pixels).Distinct(ReferenceEqualityComparer.Instance).Count());
    }

    [Fact]
    public async Task FramesAreFfmpegsOwnDecodeWithStreamTimestamps()
    {
        var frames = await ReadAll(new FfmpegSource(videos.Path("h264-g12.mp4")));
        Assert.Equal(75, frames.Count);
        Assert.Equal(Enumerable.Range(0, 75).Select(i => TimeSpan.FromMilliseconds(40 * i)), frames.Select(f => f.Timestamp));
        Assert.All(frames, f => Assert.Equal((160, 90), (f.Image.Width, f.Image.Height)));
        byte[] reference = GeneratedVideos.Ffmpeg($"-i {videos.Path("h264-g12.mp4")} -frames:v 1 -f rawvideo -pix_fmt rgb24 pipe:1");
        Assert.Equal(reference, frames[0].Image.Pixels);
        Assert.NotEqual(frames[0].Image.Pixels, frames[1].Image.Pixels);
    }

    [Fact]
    public async Task VariableFrameRateKeepsEachFramesTime()
    {
        var frames = await ReadAll(new FfmpegSource(videos.Path("vfr.mkv")));
        Assert.Equal(75, frames.Count);
        var expected = Enumerable.Range(0, 75).Select(n => TimeSpan.FromMilliseconds(40 * n + 10 * (n % 3)));
        Assert.Equal(expected, frames.Select(f => f.Timestamp));
        // At 10 fps the first frame of each 100 ms interval is kept, with its own jittered time.
        var sampled = await ReadAll(new FfmpegSource(videos.Path("vfr.mkv"), new FrameSampling { Fps = 10 }));
        var firstOfEachInterval = expected.GroupBy(t => (long)(t.TotalMilliseconds / 100)).Select(g => g.First());
        Assert.Equal(firstOfEachInterval, sampled.Select(f => f.Timestamp));
    }

    [Fact]
    public async Task SamplingByFpsMaxFramesStartAndEnd()
    {
        string path = videos.Path("h264-g12.mp4");
        var fps = await ReadAll(new FfmpegSource(path, new FrameSampling { Fps = 5 }));
        Assert.Equal(Enumerable.Range(0, 15).Select(i => TimeSpan.FromMilliseconds(200 * i)), fps.Select(f => f.Timestamp));
        var limited = await ReadAll(new FfmpegSource(path, new FrameSampling { Fps = 5, MaxFrames = 4 }));
        Assert.Equal(fps.Take(4).Select(f => f.Timestamp), limited.Select(f => f.Timestamp));
        var range = await ReadAll(new FfmpegSource(path, new FrameSampling { Start = TimeSpan.FromSeconds(1), End = TimeSpan.FromSeconds(2) }));
        Assert.Equal(Enumerable.Range(25, 25).Select(i => TimeSpan.FromMilliseconds(40 * i)), range.Select(f => f.Timestamp));
        Assert.Equal(Enumerable.Range(0, 25).Select(i => (long)i), range.Select(f => f.Index));
        var all = await ReadAll(new FfmpegSource(path));
        for (int i = 0; i < range.Count; i++) Assert.Equal(all[25 + i].Image.Pixels, range[i].Image.Pixels);
        var quick = await ReadAll(new QuickDecoder(path, new FrameSampling { Fps = 5, MaxFrames = 4 }, new QuickDecoderOptions { Workers = 2 }));
        AssertSameFrames(limited, quick, "QuickDecoder with a frame limit");
    }

    [Fact]
    public async Task SizeLimitShrinksKeepingAspectAndNeverEnlarges()
    {
        var small = await ReadAll(new FfmpegSource(videos.Path("h264-g12.mp4"), new FrameSampling { MaxWidth = 80, MaxFrames = 2 }));
        Assert.All(small, f => Assert.Equal((80, 45), (f.Image.Width, f.Image.Height)));
        var same = await ReadAll(new FfmpegSource(videos.Path("h264-g12.mp4"), new FrameSampling { MaxWidth = 640, MaxHeight = 480, MaxFrames = 1 }));
        Assert.Equal((160, 90), (same[0].Image.Width, same[0].Image.Height));
    }

    [Fact]
    public async Task QuickDecoderHoldsAtMostItsFramesAheadOfASlowConsumer()
    {
        var decoder = new QuickDecoder(videos.Path("h264-g12.mp4"), null, new QuickDecoderOptions { Workers = 3, MaxFramesAhead = 5, MinChunkFrames = 4 });
        int count = 0;
        await foreach (var frame in decoder.ReadAsync())
        {
            if (count++ % 10 == 0) await Task.Delay(30);
        }
        Assert.Equal(75, count);
        Assert.True(decoder.ChunkCount > 3, $"{decoder.ChunkCount} chunks");
        Assert.InRange(decoder.PeakFramesAhead, 1, 5);
    }

    [Fact]
    public async Task CorruptFrameIsSkippedAndReportedAndDecodingGoesOn()
    {
        string path = videos.Path("mjpeg-corrupt.mkv");
        var intact = await ReadAll(new FfmpegSource(videos.Path("mjpeg.mkv")));
        Assert.Equal(10, intact.Count);
        var skipped = new List<SkippedFrame>();
        var sequentialSource = new FfmpegSource(path);
        sequentialSource.FrameSkipped += skipped.Add;
        var sequential = await ReadAll(sequentialSource);
        Assert.Equal(9, sequential.Count);
        var report = Assert.Single(skipped);
        Assert.Equal(4, report.Index);
        Assert.DoesNotContain(TimeSpan.FromMilliseconds(400), sequential.Select(f => f.Timestamp));
        Assert.Equal(intact.Select(f => f.Timestamp).Where(t => t != TimeSpan.FromMilliseconds(400)), sequential.Select(f => f.Timestamp));
        Assert.Equal(intact[5].Image.Pixels, sequential[4].Image.Pixels);

        var parallelSkipped = new List<SkippedFrame>();
        var quick = new QuickDecoder(path, null, new QuickDecoderOptions { Workers = 2, MinChunkFrames = 2 });
        quick.FrameSkipped += parallelSkipped.Add;
        AssertSameFrames(sequential, await ReadAll(quick), "QuickDecoder over a corrupt frame");
        Assert.Equal(4, Assert.Single(parallelSkipped).Index);
    }

    [Fact]
    public async Task ImageFolderInNaturalOrderWithTimestampsFromFps()
    {
        string folder = Path.Combine(videos.Folder, "images");
        Directory.CreateDirectory(folder);
        for (int i = 1; i <= 10; i++) File.WriteAllBytes(Path.Combine(folder, $"frame{i}.ppm"), Ppm(8, 4, (byte)(i * 20)));
        File.WriteAllBytes(Path.Combine(folder, "frame11.png"), [1, 2, 3, 4]);
        File.WriteAllText(Path.Combine(folder, "notes.txt"), "not an image");
        var source = new ImageFolderSource(folder, fps: 2);
        var skipped = new List<SkippedFrame>();
        source.FrameSkipped += skipped.Add;
        var frames = await ReadAll(source);
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (byte)(i * 20)), frames.Select(f => f.Image.Pixels[0]));
        Assert.Equal(Enumerable.Range(0, 10).Select(i => TimeSpan.FromMilliseconds(500 * i)), frames.Select(f => f.Timestamp));
        Assert.Equal(10, Assert.Single(skipped).Index);

        var sampled = await ReadAll(new ImageFolderSource(folder, fps: 2, new FrameSampling { Fps = 1, Start = TimeSpan.FromSeconds(1), MaxFrames = 3, MaxWidth = 4 }));
        Assert.Equal(new[] { 1.0, 2.0, 3.0 }, sampled.Select(f => f.Timestamp.TotalSeconds));
        Assert.Equal(new byte[] { 60, 100, 140 }, sampled.Select(f => f.Image.Pixels[0]));
        Assert.All(sampled, f => Assert.Equal((4, 2), (f.Image.Width, f.Image.Height)));
        await Assert.ThrowsAsync<VideoSourceException>(() => ReadAll(new ImageFolderSource(Path.Combine(videos.Folder, "no-such-folder"))));
    }

    static byte[] Ppm(int width, int height, byte value)
    {
        byte[] header = Encoding.ASCII.GetBytes($"P6\n{width} {height}\n255\n");
        return [.. header, .. Enumerable.Repeat(value, 3 * width * height)];
    }

    [Fact]
    public async Task PushedFramesBackPressureTheProducer()
    {
        const int capacity = 2, total = 12;
        var source = new PushedFrameSource(capacity);
        long consumed = 0, worstLead = 0;
        var producer = Task.Run(async () =>
        {
            for (int i = 0; i < total; i++)
            {
                await source.PushAsync(new RgbImage(4, 4), TimeSpan.FromMilliseconds(100 * i));
                worstLead = Math.Max(worstLead, i + 1 - Interlocked.Read(ref consumed));
            }
            source.Complete();
        });
        var timestamps = new List<TimeSpan>();
        await foreach (var frame in source.ReadAsync())
        {
            await Task.Delay(15);
            timestamps.Add(frame.Timestamp);
            Interlocked.Increment(ref consumed);
        }
        await producer;
        Assert.Equal(Enumerable.Range(0, total).Select(i => TimeSpan.FromMilliseconds(100 * i)), timestamps);
        // Queued frames plus the one in the consumer's hands.
        Assert.InRange(worstLead, 1, capacity + 1);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await source.PushAsync(new RgbImage(4, 4)));
    }

    static async Task<string> ErrorOf(IFrameSource source)
    {
        var error = await Assert.ThrowsAsync<VideoSourceException>(() => ReadAll(source));
        Assert.DoesNotContain('\n', error.Message);
        return error.Message;
    }

    [Fact]
    public async Task BadInputGivesOneLineErrors()
    {
        string missing = videos.Path("missing.mp4");
        Assert.Equal($"{missing}: no such file", await ErrorOf(new FfmpegSource(missing)));
        Assert.Equal($"{videos.Path("truncated.mp4")}: not a readable video (moov atom not found; Invalid data found when processing input)",
            await ErrorOf(new FfmpegSource(videos.Path("truncated.mp4"))));
        Assert.StartsWith($"{videos.Path("truncated.mp4")}: not a readable video (", await ErrorOf(new QuickDecoder(videos.Path("truncated.mp4"))));
        Assert.Equal($"{videos.Path("empty.mp4")}: empty file (zero-length stream)", await ErrorOf(new FfmpegSource(videos.Path("empty.mp4"))));
        Assert.Equal("camera /dev/video99: no such camera device", await ErrorOf(new FfmpegSource("camera:/dev/video99")));
        Assert.Equal($"{videos.Path("h264-g12.mp4")}: ffmpeg not found in '/nonexistent': install it with apt-get install -y ffmpeg",
            await ErrorOf(new FfmpegSource(videos.Path("h264-g12.mp4"), null, new FfmpegOptions { BinaryFolder = "/nonexistent" })));
        Assert.Equal($"{videos.Path("h264-g12.mp4")}: ffmpeg not found in '/nonexistent': install it with apt-get install -y ffmpeg",
            await ErrorOf(new QuickDecoder(videos.Path("h264-g12.mp4"), null, new QuickDecoderOptions { Ffmpeg = new FfmpegOptions { BinaryFolder = "/nonexistent" } })));
        Assert.Equal($"{videos.Path("h264-g12.mp4")}: no video frames in the requested time range",
            await ErrorOf(new FfmpegSource(videos.Path("h264-g12.mp4"), new FrameSampling { Start = TimeSpan.FromSeconds(10) })));
    }

    [Fact]
    public async Task AStreamWithNoFramesIsAZeroLengthError()
    {
        string path = videos.Path("no-frames.mp4");
        GeneratedVideos.Ffmpeg($"-f lavfi -i testsrc2=size=160x90:rate=25:duration=1 -t 0 -c:v libx264 -y {path}");
        Assert.Equal($"{path}: no video frames (zero-length stream, or no video stream)", await ErrorOf(new FfmpegSource(path)));
        Assert.Equal($"{path}: no video frames (zero-length stream, or no video stream)", await ErrorOf(new QuickDecoder(path)));
    }

    [Fact]
    public async Task AStalledStreamTimesOut()
    {
        string fifo = videos.Path("stalled.fifo");
        using (var mkfifo = Process.Start("mkfifo", fifo)) mkfifo.WaitForExit();
        var watch = Stopwatch.StartNew();
        string message = await ErrorOf(new FfmpegSource(fifo, null, new FfmpegOptions { StallTimeout = TimeSpan.FromSeconds(1) }));
        Assert.Equal($"{fifo}: stream stalled: nothing arrived for 1 s", message);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"took {watch.Elapsed}");
    }

    [Fact]
    public async Task AStreamThatStallsWhileDecodingTimesOut()
    {
        // The FIFO serves the whole stream to ffprobe, then only its first half to ffmpeg, and stays open. The probe
        // runs to its end before the second writer opens: a FIFO's writer that opened while ffprobe still read would
        // hand its bytes to ffprobe (and ffmpeg would then get nothing, a stall at the start, not midway).
        string fifo = videos.Path("stalls-midway.fifo");
        using (var mkfifo = Process.Start("mkfifo", fifo)) mkfifo.WaitForExit();
        byte[] stream = File.ReadAllBytes(videos.Path("vfr.mkv"));
        // 3 s, not 1: on a loaded 2-core machine ffmpeg's start and first frame alone can take over a second.
        var source = new FfmpegSource(fifo, null, new FfmpegOptions { StallTimeout = TimeSpan.FromSeconds(3) });
        var probeWriter = Task.Run(async () =>
        {
            try
            {
                await using var probe = new FileStream(fifo, FileMode.Open, FileAccess.Write);
                await probe.WriteAsync(stream);
            }
            catch (IOException) { }
        });
        await source.ProbeAsync();
        await probeWriter;
        using var done = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            using var decode = new FileStream(fifo, FileMode.Open, FileAccess.Write);
            await decode.WriteAsync(stream.AsMemory(0, stream.Length / 2));
            await decode.FlushAsync();
            try { await Task.Delay(Timeout.Infinite, done.Token); } catch (OperationCanceledException) { }
        });
        int frames = 0;
        var error = await Assert.ThrowsAsync<VideoSourceException>(async () =>
        {
            await foreach (var frame in source.ReadAsync()) frames++;
        });
        done.Cancel();
        await writer;
        Assert.Equal($"{fifo}: stream stalled: nothing arrived for 3 s", error.Message);
        Assert.InRange(frames, 1, 74);
    }

    [Fact]
    public void CliTreatsVideoSourceErrorsAsUserErrors()
    {
        var root = new System.CommandLine.RootCommand();
        var command = new System.CommandLine.Command("video-test");
        command.SetAction(new Action<System.CommandLine.ParseResult>(_ => throw new VideoSourceException("clip.mp4", "no such file")));
        root.Subcommands.Add(command);
        var error = new StringWriter();
        Assert.Equal(2, VidKV.Cli.CliRunner.Run(root, ["video-test"], error));
        Assert.Equal("vidkv: error: clip.mp4: no such file", error.ToString().Trim());
    }
}
