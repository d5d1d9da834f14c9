using System.ComponentModel;
using System.Diagnostics;
using System.Threading.Channels;

namespace VidKV.Video;

/// <summary>
/// One ffmpeg or ffprobe process with its standard output as a byte stream and its standard error as lines on a
/// channel (drained all the time, so the tool never blocks on its log while the reader waits on the output). Disposing
/// kills it if it still runs.
/// </summary>
internal sealed partial class FfmpegProcess : IAsyncDisposable
{
    readonly Process process;
    readonly Channel<string> errorLines = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    readonly Task errorPump;

    FfmpegProcess(Process process)
    {
        this.process = process;
        errorPump = PumpErrorsAsync();
        WidenPipe(process.StandardOutput.BaseStream);
    }

    /// <summary>Pipe capacity asked of the kernel for the tool's output: 1 MiB (Linux's default limit for an
    /// unprivileged process, /proc/sys/fs/pipe-max-size), against the default 64 KiB.</summary>
    const int PipeBytes = 1 << 20;

    /// <summary>
    /// A raw 720p frame is 2.7 MB: through a 64 KiB pipe that is some 40 writes and reads, each a wake-up of the other
    /// side; a 1 MiB pipe takes it in three. Linux only (fcntl F_SETPIPE_SZ); where it fails the default stays.
    /// </summary>
    static void WidenPipe(Stream output)
    {
        if (!OperatingSystem.IsLinux() || output is not System.IO.Pipes.PipeStream pipe) return;
        _ = Fcntl((int)pipe.SafePipeHandle.DangerousGetHandle(), 1031 /* F_SETPIPE_SZ */, PipeBytes);
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "fcntl")]
    private static partial int Fcntl(int fd, int command, int argument);

    /// <summary>Starts <paramref name="executable"/>; a missing executable is the one-line "ffmpeg not found" error.</summary>
    public static FfmpegProcess Start(FfmpegOptions options, string executable, IEnumerable<string> arguments, string sourceName)
    {
        var info = new ProcessStartInfo(executable)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments) info.ArgumentList.Add(argument);
        try
        {
            return new FfmpegProcess(Process.Start(info) ?? throw new Win32Exception($"{executable} did not start"));
        }
        catch (Win32Exception e)
        {
            throw options.NotFound(sourceName, e);
        }
    }

    /// <summary>The tool's standard input (frames for an encoder).</summary>
    public Stream Input => process.StandardInput.BaseStream;

    /// <summary>The tool's standard output.</summary>
    public Stream Output => process.StandardOutput.BaseStream;

    /// <summary>The tool's standard error, line by line; completes when the tool closes it (at exit).</summary>
    public ChannelReader<string> ErrorLines => errorLines.Reader;

    public bool HasExited => process.HasExited;

    /// <summary>Ends the process now (a stall, a cancellation, or a reader that has what it wanted).</summary>
    public void Kill()
    {
        try { if (!process.HasExited) process.Kill(); }
        catch (InvalidOperationException) { }
        catch (Win32Exception) { }
    }

    /// <summary>Waits for the exit and returns the exit code.</summary>
    public async Task<int> WaitForExitAsync(CancellationToken cancellation = default)
    {
        await process.WaitForExitAsync(cancellation).ConfigureAwait(false);
        return process.ExitCode;
    }

    async Task PumpErrorsAsync()
    {
        try
        {
            while (await process.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line) errorLines.Writer.TryWrite(line);
        }
        catch (IOException) { }
        catch (ObjectDisposedException) { }
        finally { errorLines.Writer.TryComplete(); }
    }

    public async ValueTask DisposeAsync()
    {
        Kill();
        try { await process.WaitForExitAsync().ConfigureAwait(false); } catch (InvalidOperationException) { }
        await errorPump.ConfigureAwait(false);
        process.Dispose();
    }
}
