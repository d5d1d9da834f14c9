using System.Text;

namespace VidKV.Text;

/// <summary>One turn of a conversation.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>The chat formats VidKV renders.</summary>
public enum ChatFormat
{
    /// <summary>ChatML (Qwen and others): <c>&lt;|im_start|&gt;role\n…&lt;|im_end|&gt;</c>.</summary>
    ChatMl,
    /// <summary>Llama 3: <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\n…&lt;|eot_id|&gt;</c>.</summary>
    Llama3,
    /// <summary>
    /// No turns (<see cref="ChatTemplate.PlainTemplate"/>): a user's or system's text on a line of its own
    /// (<c>\n…\n</c>), an assistant's text and <c>\n</c>, no generation prompt — how <c>vidkv watch</c> asks a
    /// watched stream (VideoLLM-online's interleaving) and what the built-in world model was trained on.
    /// </summary>
    Plain,
}

/// <summary>
/// Renders conversations the way llama.cpp's built-in templates do, choosing the format from the model's
/// <c>tokenizer.chat_template</c> by its marker tokens (ChatML when there is none, as llama.cpp does).
/// </summary>
public static class ChatTemplate
{
    /// <summary>The Jinja template that stands for <see cref="ChatFormat.Plain"/> (what the trainer writes into the built-in model).</summary>
    public const string PlainTemplate =
        "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] + '\\n' }}{% else %}{{ '\\n' + message['content'] + '\\n' }}{% endif %}{% endfor %}";

    /// <summary>
    /// The format a model's Jinja chat template (<see cref="Vocabulary.ChatTemplate"/>) calls for: <see cref="ChatFormat.Plain"/>
    /// when it is <see cref="PlainTemplate"/>, Llama 3 when it uses <c>&lt;|start_header_id|&gt;</c>, otherwise (null included) ChatML.
    /// </summary>
    public static ChatFormat Detect(string? template) =>
        template == PlainTemplate ? ChatFormat.Plain
        : template != null && template.Contains("<|start_header_id|>", StringComparison.Ordinal) ? ChatFormat.Llama3 : ChatFormat.ChatMl;

    /// <summary>The prompt text; special-token text in it is meant to be tokenised with special parsing on.</summary>
    public static string Apply(ChatFormat format, IEnumerable<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            if (format == ChatFormat.ChatMl) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
            else if (format == ChatFormat.Plain) sb.Append(m.Role == "assistant" ? "" : "\n").Append(m.Content).Append('\n');
            else sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
        }
        if (addGenerationPrompt)
            sb.Append(format switch
            {
                ChatFormat.ChatMl => "<|im_start|>assistant\n",
                ChatFormat.Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
                _ => "",
            });
        return sb.ToString();
    }
}
