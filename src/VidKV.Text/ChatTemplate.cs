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
}

/// <summary>
/// Renders conversations the way llama.cpp's built-in templates do, choosing the format from the model's
/// <c>tokenizer.chat_template</c> by its marker tokens (ChatML when there is none, as llama.cpp does).
/// </summary>
public static class ChatTemplate
{
    /// <summary>The format a model's Jinja chat template (<see cref="Vocabulary.ChatTemplate"/>) calls for: Llama 3 when it uses <c>&lt;|start_header_id|&gt;</c>, otherwise (null included) ChatML.</summary>
    public static ChatFormat Detect(string? template) =>
        template != null && template.Contains("<|start_header_id|>", StringComparison.Ordinal) ? ChatFormat.Llama3 : ChatFormat.ChatMl;

    /// <summary>The prompt text; special-token text in it is meant to be tokenised with special parsing on.</summary>
    public static string Apply(ChatFormat format, IEnumerable<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            if (format == ChatFormat.ChatMl) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
            else sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
        }
        if (addGenerationPrompt)
            sb.Append(format == ChatFormat.ChatMl ? "<|im_start|>assistant\n" : "<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    }
}
