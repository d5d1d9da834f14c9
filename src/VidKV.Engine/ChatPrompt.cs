using System.Text;
using VidKV.Formats;
using VidKV.Text;
using VidKV.Video;

namespace VidKV.Engine;

/// <summary>
/// A conversation rendered with the model's chat template and cut where its images and videos stand: text segments
/// around media, in order (<see cref="Segments"/> has one more entry than <see cref="Media"/>). The HTTP API and
/// <see cref="VidKVChatClient"/> build it the same way, message by message and part by part, then feed it to a session:
/// segment k and medium k with <see cref="AppendPartAsync"/>, the last segment (the generation prompt) as the question.
/// Owns the video sources added to it (disposed with it).
/// </summary>
internal sealed class ChatPrompt : IAsyncDisposable
{
    readonly List<object?> media; // RgbImage or IFrameSource (null: a video still to come, ProvideVideo), in prompt order

    ChatPrompt(string[] segments, List<object?> media, List<string> labels)
    {
        Segments = segments;
        this.media = media;
        MediaLabels = labels;
    }

    /// <summary>Text before each medium, then the text after the last (which ends with the generation prompt).</summary>
    public IReadOnlyList<string> Segments { get; }

    /// <summary>The images (<see cref="RgbImage"/>) and videos (<see cref="IFrameSource"/>) in prompt order.</summary>
    public IReadOnlyList<object?> Media => media;

    /// <summary>Where each medium came from in the caller's terms (<c>messages[0].content[1].image_url.url</c>), for errors.</summary>
    public IReadOnlyList<string> MediaLabels { get; }

    /// <summary>
    /// Gives the video added without its source (<see cref="Builder.AddVideo"/> with null) at <paramref name="index"/>:
    /// a caller that opens its videos only after checking the whole request. The prompt owns it from here on.
    /// </summary>
    public void ProvideVideo(int index, IFrameSource video)
    {
        ArgumentNullException.ThrowIfNull(video);
        if (media[index] != null) throw new InvalidOperationException($"medium {index} ({MediaLabels[index]}) is already given");
        media[index] = video;
    }

    /// <summary>The text after the last medium: what <see cref="Session.AskAsync"/> is asked.</summary>
    public string Question => Segments[^1];

    /// <summary>
    /// Appends segment <paramref name="index"/> (when not empty), then medium <paramref name="index"/>: an image with
    /// <see cref="Session.AppendImageAsync"/>, a video's frames with <see cref="Session.AppendVideoAsync"/> (which ends
    /// its segment).
    /// </summary>
    public async Task AppendPartAsync(Session session, int index, CancellationToken cancellation)
    {
        if (Segments[index].Length > 0) await session.AppendAsync(Segments[index], cancellation).ConfigureAwait(false);
        switch (media[index])
        {
            case RgbImage image:
                await session.AppendImageAsync(image, cancellation).ConfigureAwait(false);
                break;
            case IFrameSource video:
                await session.AppendVideoAsync(video.ReadAsync(cancellation), null, cancellation).ConfigureAwait(false);
                break;
            default:
                throw new InvalidOperationException($"the video {MediaLabels[index]} was never given (ProvideVideo)");
        }
    }

    /// <summary>Disposes the video sources.</summary>
    public async ValueTask DisposeAsync()
    {
        foreach (var medium in media)
            if (medium is IFrameSource source) await source.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Collects messages part by part (<see cref="BeginMessage"/>, <see cref="AddText"/>, <see cref="AddImage"/>, <see cref="AddVideo"/>), then renders them.</summary>
    public sealed class Builder(ChatFormat format)
    {
        // Each medium stands in the rendered text as a marker no caller's text can contain; the text is cut there.
        readonly string marker = $"<vidkv-media-{Guid.NewGuid():N}>";
        readonly List<object?> media = [];
        readonly List<string> labels = [];
        readonly List<ChatMessage> turns = [];
        readonly StringBuilder text = new();
        string? role;

        /// <summary>Media added so far.</summary>
        public int MediaCount => media.Count;

        /// <summary>Starts a message of <paramref name="role"/> (system, user, assistant), ending the one before.</summary>
        public void BeginMessage(string role)
        {
            EndMessage();
            this.role = role;
        }

        /// <summary>Adds text to the current message.</summary>
        public void AddText(string part) => Current().Append(part);

        /// <summary>Adds an image where the current message's text has reached; <paramref name="label"/> names it in errors.</summary>
        public void AddImage(RgbImage image, string label) => AddMedium(image, label);

        /// <summary>
        /// Adds a video (its frames are read when the prompt goes in) where the current message's text has reached; the
        /// prompt owns the source. Null leaves it to <see cref="ProvideVideo"/>. <paramref name="label"/> names it in errors.
        /// </summary>
        public void AddVideo(IFrameSource? video, string label) => AddMedium(video, label);

        void AddMedium(object? medium, string label)
        {
            Current().Append(marker);
            media.Add(medium);
            labels.Add(label);
        }

        StringBuilder Current() => role != null ? text : throw new InvalidOperationException("no message begun");

        void EndMessage()
        {
            if (role == null) return;
            turns.Add(new ChatMessage(role, text.ToString()));
            text.Clear();
            role = null;
        }

        /// <summary>The messages rendered (with the assistant's generation prompt at the end when asked) and cut at their media.</summary>
        public ChatPrompt Build(bool addGenerationPrompt = true)
        {
            EndMessage();
            string[] segments = ChatTemplate.Apply(format, turns, addGenerationPrompt).Split(marker);
            if (segments.Length != media.Count + 1)
                throw new InvalidOperationException($"the rendered prompt has {segments.Length - 1} media markers for {media.Count} media");
            return new ChatPrompt(segments, [.. media], [.. labels]);
        }
    }

    /// <summary>
    /// What ends an assistant's message in <paramref name="format"/> after its text (ChatML's <c>&lt;|im_end|&gt;\n</c>,
    /// Llama 3's <c>&lt;|eot_id|&gt;</c>): an empty assistant message rendered, less the generation prompt that starts it.
    /// A conversation kept in a session closes each answer with it, so the session holds what rendering the whole
    /// conversation again would give.
    /// </summary>
    public static string AssistantMessageEnd(ChatFormat format)
    {
        string generationPrompt = ChatTemplate.Apply(format, [], addGenerationPrompt: true);
        string empty = ChatTemplate.Apply(format, [new ChatMessage("assistant", "")], addGenerationPrompt: false);
        if (!empty.StartsWith(generationPrompt, StringComparison.Ordinal))
            throw new InvalidOperationException($"the {format} template's assistant message does not start with its generation prompt");
        return empty[generationPrompt.Length..];
    }
}
