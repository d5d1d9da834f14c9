using System.CommandLine;
using VidKV.Formats;
using VidKV.Video;

namespace VidKV.Cli;

/// <summary>
/// Runs the command line: parse errors and bad input print one line to stderr and exit with 2; no stack traces
/// unless VIDKV_DEBUG=1.
/// </summary>
public static class CliRunner
{
    public const int BadInput = 2;

    /// <param name="output">where commands that print through the invocation's output write (default stdout)</param>
    public static int Run(RootCommand root, string[] args, TextWriter? error = null, TextWriter? output = null)
    {
        error ??= Console.Error;
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (var e in parsed.Errors) error.WriteLine($"vidkv: error: {e.Message}");
            error.WriteLine("Run 'vidkv --help' for usage.");
            return BadInput;
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, Output = output ?? Console.Out, Error = error });
        }
        catch (Exception e) when (IsUserError(e))
        {
            error.WriteLine($"vidkv: error: {e.Message}");
            if (Environment.GetEnvironmentVariable("VIDKV_DEBUG") == "1") error.WriteLine(e);
            return BadInput;
        }
    }

    static bool IsUserError(Exception e) => e is ModelFormatException or ImageFormatException or VideoSourceException or IOException
        or UnauthorizedAccessException or ArgumentException or InvalidOperationException or NotSupportedException or FormatException;

    /// <summary>Adds options to a command in one call.</summary>
    public static Command With(this Command command, params Option[] options)
    {
        foreach (var o in options) command.Options.Add(o);
        return command;
    }
}
