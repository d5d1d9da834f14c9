using Spectre.Console;

namespace VidKV.Cli;

/// <summary>
/// Where <c>vidkv watch</c> shows its running status (frames, ingest frames/s, hot/cold KV, RSS) and prints answers,
/// comments and notes. On a terminal (stdout and stderr both) a Spectre.Console live status line with a progress bar
/// (over the file's duration; a moving bar for a live stream) stays at the bottom while printed lines scroll above it;
/// otherwise (a pipe, a file, tests) the status is one plain line per frame on stderr and the rest goes to stdout as
/// it comes.
/// </summary>
abstract class WatchDisplay
{
    /// <summary>
    /// The live display when both streams are the process's terminal and Spectre.Console finds it interactive (it does
    /// not with stdin redirected, and would then show no status at all), else plain lines to the writers given.
    /// </summary>
    public static WatchDisplay For(TextWriter output, TextWriter log) =>
        ReferenceEquals(output, Console.Out) && ReferenceEquals(log, Console.Error) && !Console.IsOutputRedirected && !Console.IsErrorRedirected
        && AnsiConsole.Profile.Capabilities.Interactive ? new Live() : new Plain(output, log);

    /// <summary>Runs <paramref name="work"/> with the display up; <paramref name="totalSeconds"/>: the stream's length when known.</summary>
    public abstract Task RunAsync(Func<Task> work, double? totalSeconds);
    /// <summary>The status after a frame at <paramref name="seconds"/> of stream time.</summary>
    public abstract void Status(string line, double seconds);
    /// <summary>A note (a skipped frame) on the log.</summary>
    public abstract void Note(string line);
    /// <summary>A whole line of output (a comment).</summary>
    public abstract void Print(string line);
    /// <summary>An answer as it streams: <paramref name="question"/>, then its pieces.</summary>
    public abstract Task<string> AnswerAsync(string question, IAsyncEnumerable<string> pieces);

    sealed class Plain(TextWriter output, TextWriter log) : WatchDisplay
    {
        readonly Lock gate = new();

        public override Task RunAsync(Func<Task> work, double? totalSeconds) => work();
        public override void Status(string line, double seconds) => Note(line);
        public override void Note(string line) { lock (gate) log.WriteLine(line); }
        public override void Print(string line) { lock (gate) output.WriteLine(line); }

        public override async Task<string> AnswerAsync(string question, IAsyncEnumerable<string> pieces)
        {
            lock (gate) { output.WriteLine($"Q: {question}"); output.Write("A: "); }
            var answer = new System.Text.StringBuilder();
            await foreach (var piece in pieces)
            {
                answer.Append(piece);
                lock (gate) output.Write(piece);
            }
            lock (gate) output.WriteLine();
            return answer.ToString();
        }
    }

    /// <summary>Spectre.Console's progress display; printed lines go through the same console so the bar redraws below them.</summary>
    sealed class Live : WatchDisplay
    {
        readonly IAnsiConsole console = AnsiConsole.Console;
        ProgressTask? task;

        public override Task RunAsync(Func<Task> work, double? totalSeconds) =>
            console.Progress().AutoClear(false).HideCompleted(false)
                .Columns(new ProgressBarColumn(), new PercentageColumn(), new TaskDescriptionColumn { Alignment = Justify.Left })
                .StartAsync(async context =>
                {
                    task = context.AddTask("starting", maxValue: totalSeconds ?? 1);
                    task.IsIndeterminate = totalSeconds == null;
                    await work();
                    if (totalSeconds != null) task.Value = task.MaxValue;
                    task.StopTask();
                });

        public override void Status(string line, double seconds)
        {
            if (task == null) return;
            task.Description = Markup.Escape(line.Trim());
            if (!task.IsIndeterminate) task.Value = Math.Min(seconds, task.MaxValue);
        }

        public override void Note(string line) => console.MarkupLine($"[grey]{Markup.Escape(line)}[/]");
        public override void Print(string line) => console.WriteLine(line);

        public override async Task<string> AnswerAsync(string question, IAsyncEnumerable<string> pieces)
        {
            // Whole lines only: a live display cannot keep a half-written line above it.
            var answer = new System.Text.StringBuilder();
            await foreach (var piece in pieces) answer.Append(piece);
            console.WriteLine($"Q: {question}");
            console.WriteLine($"A: {answer}");
            return answer.ToString();
        }
    }
}
