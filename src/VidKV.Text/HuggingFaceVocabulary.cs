using System.Text.Json;
using VidKV.Formats;

namespace VidKV.Text;

/// <summary>
/// Builds a <see cref="Vocabulary"/> from a Hugging Face <c>tokenizer.json</c> (model type BPE) and, when present,
/// <c>tokenizer_config.json</c> (BOS/EOS, add_bos_token, chat_template). Byte-level BPE (GPT-2, Qwen2, Llama-3) keeps
/// its merges; a SentencePiece BPE (byte_fallback, ▁ for spaces, as Llama-2 style checkpoints ship) becomes llama.cpp's
/// SPM algorithm with each piece scored by −(rank of the first merge that makes it), the order HF's converter wrote
/// the merges in.
/// </summary>
internal static class HuggingFaceVocabulary
{
    public static Vocabulary Load(string tokenizerJsonPath, string? tokenizerConfigPath = null)
    {
        if (!File.Exists(tokenizerJsonPath)) throw ModelFormatException.InFile(tokenizerJsonPath, "file not found");
        using var document = Parse(tokenizerJsonPath);
        var root = document.RootElement;
        var model = Property(root, "model", tokenizerJsonPath);
        string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        if (type != "BPE") throw ModelFormatException.InFile(tokenizerJsonPath, $"field 'model.type' = '{type}' is not supported (BPE)");

        var vocab = Property(model, "vocab", tokenizerJsonPath);
        var idsByToken = new Dictionary<string, int>();
        foreach (var entry in vocab.EnumerateObject()) idsByToken[entry.Name] = entry.Value.GetInt32();
        var added = new List<(int Id, string Content, bool Special)>();
        if (root.TryGetProperty("added_tokens", out var addedTokens) && addedTokens.ValueKind == JsonValueKind.Array)
            foreach (var a in addedTokens.EnumerateArray())
                added.Add((a.GetProperty("id").GetInt32(), a.GetProperty("content").GetString()!, a.TryGetProperty("special", out var s) && s.GetBoolean()));

        int count = Math.Max(idsByToken.Count == 0 ? 0 : idsByToken.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var tokens = new string[count];
        var types = new TokenType[count];
        for (int i = 0; i < count; i++) { tokens[i] = $"[PAD{i}]"; types[i] = TokenType.Unused; }
        foreach (var (token, id) in idsByToken) { tokens[id] = token; types[id] = TokenType.Normal; }
        foreach (var (id, content, special) in added) { tokens[id] = content; types[id] = special ? TokenType.Control : TokenType.UserDefined; }

        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var mergeArray))
            foreach (var m in mergeArray.EnumerateArray())
                merges.Add(m.ValueKind == JsonValueKind.Array ? $"{m[0].GetString()} {m[1].GetString()}" : m.GetString()!);

        bool sentencePiece = model.TryGetProperty("byte_fallback", out var fallback) && fallback.ValueKind == JsonValueKind.True;
        using var config = tokenizerConfigPath != null && File.Exists(tokenizerConfigPath) ? Parse(tokenizerConfigPath) : null;
        var cfg = config?.RootElement;
        var idByText = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++) idByText[tokens[i]] = i;
        int? Id(string field) => cfg is { } c && c.TryGetProperty(field, out var v) && TokenText(v) is { } text && idByText.TryGetValue(text, out int id) ? id : null;
        bool? addBos = cfg is { } c3 && c3.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False ? ab.GetBoolean() : null;
        addBos ??= PostProcessorAddsToken(root);
        string? chatTemplate = cfg is { } c4 && c4.TryGetProperty("chat_template", out var ct) && ct.ValueKind == JsonValueKind.String ? ct.GetString() : null;

        if (sentencePiece)
        {
            var scores = new float[count];
            var seen = new HashSet<string>();
            for (int rank = 0; rank < merges.Count; rank++)
            {
                string merged = merges[rank].Replace(" ", "", StringComparison.Ordinal);
                if (seen.Add(merged) && idsByToken.TryGetValue(merged, out int id)) scores[id] = -rank - 1;
            }
            for (int i = 0; i < count; i++)
                if (tokens[i].Length == 6 && tokens[i].StartsWith("<0x", StringComparison.Ordinal) && tokens[i].EndsWith('>')) types[i] = TokenType.Byte;
            int? unknown = model.TryGetProperty("unk_token", out var unk) && unk.GetString() is { } u && idsByToken.TryGetValue(u, out int uid) ? uid : null;
            return new Vocabulary(VocabularyKind.SentencePiece, "default", tokens, scores, types, null,
                Id("bos_token"), Id("eos_token"), unknown, addBos, null, true, chatTemplate);
        }
        return new Vocabulary(VocabularyKind.BytePairEncoding, DetectPreTokenizer(root), tokens, null, types, merges,
            Id("bos_token"), Id("eos_token"), null, addBos ?? false, null, false, chatTemplate);
    }

    static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw ModelFormatException.InFile(path, $"line {e.LineNumber + 1}: not valid JSON: {e.Message}"); }
    }

    static JsonElement Property(JsonElement element, string name, string path) =>
        element.TryGetProperty(name, out var value) ? value : throw ModelFormatException.InFile(path, $"field '{name}' is missing");

    /// <summary>A special token given as a string or as {"content": ...}.</summary>
    static string? TokenText(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString(),
        JsonValueKind.Object when value.TryGetProperty("content", out var c) => c.GetString(),
        _ => null,
    };

    /// <summary>True when the post-processor's single-sequence template starts with a special token (Llama-3's BOS).</summary>
    static bool? PostProcessorAddsToken(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var post) || post.ValueKind != JsonValueKind.Object) return null;
        string json = post.GetRawText();
        return json.Contains("\"SpecialToken\"", StringComparison.Ordinal) ? true : null;
    }

    /// <summary>Maps the pre-tokeniser's split regex to llama.cpp's pre-tokeniser names.</summary>
    static string DetectPreTokenizer(JsonElement root)
    {
        var patterns = new List<string>();
        if (root.TryGetProperty("pre_tokenizer", out var pre)) CollectRegexes(pre, patterns);
        if (patterns.Any(p => p.Contains(@"\p{N}{1,3}", StringComparison.Ordinal))) return "llama-bpe";
        if (patterns.Any(p => p.Contains(@"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|", StringComparison.Ordinal))) return "qwen2";
        return "gpt2";
    }

    static void CollectRegexes(JsonElement element, List<string> patterns)
    {
        if (element.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in element.EnumerateObject())
            {
                if (p.Name == "Regex" && p.Value.ValueKind == JsonValueKind.String) patterns.Add(p.Value.GetString()!);
                else CollectRegexes(p.Value, patterns);
            }
        }
        else if (element.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in element.EnumerateArray()) CollectRegexes(item, patterns);
        }
    }
}
