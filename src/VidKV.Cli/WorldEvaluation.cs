using System.Globalization;
using System.Runtime.CompilerServices;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.World;

namespace VidKV.Cli;

/// <summary>A model's answer to a world question: its text (trimmed), whether it is exactly the world's, and the time to its first piece.</summary>
public readonly record struct WorldAnswer(string Text, bool Right, TimeSpan FirstPiece);

/// <summary>What a model got right on generated worlds (<see cref="WorldEvaluation"/>).</summary>
public sealed class WorldScore
{
    public int Clips, Questions, Correct, EventFrames, Comments, Hits, QuietFrames, QuietSilent;
    public readonly Dictionary<QuestionKind, (int Asked, int Right)> ByKind = [];
    public readonly List<string> Misses = [];

    /// <summary>Share of questions answered exactly.</summary>
    public double Accuracy => Questions == 0 ? 0 : (double)Correct / Questions;
    /// <summary>F1 of comments against event frames: a hit is a comment on an event frame that says its narration exactly.</summary>
    public double NarrationF1 => Hits == 0 ? 0 : 2.0 * Hits / (EventFrames + Comments);
    /// <summary>Share of event-free frames without a comment.</summary>
    public double Silence => QuietFrames == 0 ? 1 : (double)QuietSilent / QuietFrames;

    public string Summary() => string.Create(CultureInfo.InvariantCulture,
        $"{Clips} clips: answers {Correct}/{Questions} exact ({Accuracy:P1}); comments: {Hits} right of {EventFrames} events and {Comments} said (F1 {NarrationF1:F3}); silent on {QuietSilent}/{QuietFrames} event-free frames ({Silence:P1})");
}

/// <summary>
/// Runs a model over generated worlds through VidKV's own engine as <c>vidkv watch --proactive</c> would: each tick's
/// frame drawn at a video's size (the session resizes it for the tower) goes in with its timestamp, the model comments
/// on its own (<see cref="Session.WatchAsync"/>), then questions about the clip (<see cref="WorldQuestions.Sample"/> at
/// the last tick) are asked as <c>vidkv watch</c> asks them (<c>"\n{question}\n"</c>, greedy) and compared with the
/// world's answers, exactly.
/// </summary>
public static class WorldEvaluation
{
    public static async Task<WorldScore> RunAsync(InferenceEngine engine, int clips, int ticks, int size, int questionsPerClip, WorldOptions options,
        Action<WorldScore>? progress = null, CancellationToken cancellation = default)
    {
        var score = new WorldScore();
        for (int clip = 0; clip < clips; clip++)
        {
            ulong seed = WorldStream.HeldOutSeeds + (ulong)clip;
            var stream = WorldStream.Generate(seed, ticks, options);
            await using var session = engine.CreateSession();
            var said = new Dictionary<int, string>();
            await foreach (var comment in session.WatchAsync(Frames(stream, size, cancellation), new ProactiveOptions(), cancellation).ConfigureAwait(false))
                said[comment.FrameId] = comment.Text.Trim();
            for (int tick = 0; tick < ticks; tick++)
            {
                string? narration = stream.Narration(tick);
                bool spoke = said.TryGetValue(tick, out string? text);
                if (narration == null)
                {
                    score.QuietFrames++;
                    if (!spoke) score.QuietSilent++;
                    else score.Comments++;
                    continue;
                }
                score.EventFrames++;
                if (!spoke) continue;
                score.Comments++;
                if (text == narration) score.Hits++;
            }
            foreach (var question in WorldQuestions.SampleDistinct(stream, ticks - 1, seed, questionsPerClip))
            {
                var answer = await AskAsync(session, question, cancellation).ConfigureAwait(false);
                score.Questions++;
                var (a, r) = score.ByKind.GetValueOrDefault(question.Kind);
                score.ByKind[question.Kind] = (a + 1, r + (answer.Right ? 1 : 0));
                if (answer.Right) score.Correct++;
                else if (score.Misses.Count < 20) score.Misses.Add($"clip {clip}: {question.Question} → '{answer.Text}' (truth '{question.Answer}')");
            }
            score.Clips++;
            progress?.Invoke(score);
        }
        return score;
    }

    /// <summary>Most tokens of an answer: the longest exact answer ("a small red circle entered", "at 01:23") is far shorter.</summary>
    public const int AnswerTokens = 32;

    /// <summary>
    /// Asks <paramref name="question"/> as <c>vidkv watch</c> asks (<c>"\n{question}\n"</c>, greedy, at most
    /// <see cref="AnswerTokens"/> tokens) on a fork of <paramref name="session"/>: the answer trimmed, whether it is
    /// exactly the world's, and the time from asking to its first piece (to its end when it has none).
    /// </summary>
    public static async Task<WorldAnswer> AskAsync(Session session, WorldQuestion question, CancellationToken cancellation = default)
    {
        var text = new System.Text.StringBuilder();
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        TimeSpan? first = null;
        await foreach (var piece in session.AskAsync(Prompt(question), new AskOptions { MaxTokens = AnswerTokens }, cancellation).ConfigureAwait(false))
        {
            first ??= System.Diagnostics.Stopwatch.GetElapsedTime(start);
            text.Append(piece);
        }
        string answer = text.ToString().Trim();
        return new WorldAnswer(answer, answer == question.Answer, first ?? System.Diagnostics.Stopwatch.GetElapsedTime(start));
    }

    /// <summary>The text a question goes in as, after the watched frames.</summary>
    public static string Prompt(WorldQuestion question) => $"\n{question.Question}\n";

    /// <summary>Each tick of <paramref name="stream"/> drawn at <paramref name="size"/>² with its time (one tick per second) and its tick as the frame's index, as a video source gives frames.</summary>
    public static async IAsyncEnumerable<VideoFrame> Frames(WorldStream stream, int size, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        for (int tick = 0; tick < stream.TickCount; tick++)
        {
            cancellation.ThrowIfCancellationRequested();
            yield return new VideoFrame(stream.Render(tick, size, size), TimeSpan.FromSeconds(tick), tick);
            await Task.Yield();
        }
    }
}
