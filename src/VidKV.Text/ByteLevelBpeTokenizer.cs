using System.Text;
using System.Text.RegularExpressions;

namespace VidKV.Text;

/// <summary>
/// Byte-level BPE (GPT-2 family: <c>tokenizer.ggml.model = gpt2</c>). Text is split into words by the vocabulary's
/// pre-tokeniser regex, each word's UTF-8 bytes are mapped to printable characters (GPT-2's byte↔unicode table), and
/// adjacent symbols are merged by lowest merge rank (ties: leftmost first).
/// </summary>
internal sealed class ByteLevelBpeTokenizer : Tokenizer
{
    // Pre-tokeniser patterns by GGUF tokenizer.ggml.pre name (the patterns of the Hugging Face tokenizers they mirror).
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const string Qwen2Pattern = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string Llama3Pattern = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static readonly char[] ByteToChar = BuildByteToChar();
    static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    readonly Regex splitter;

    /// <summary>The printable character GPT-2's byte-level BPE uses for byte <paramref name="value"/>.</summary>
    public static char ByteSymbol(byte value) => ByteToChar[value];

    public ByteLevelBpeTokenizer(Vocabulary vocabulary) : base(vocabulary)
    {
        string pattern = vocabulary.PreTokenizer switch
        {
            "qwen2" or "qwen2.5" or "qwen-2.5" or "deepseek-r1-qwen" => Qwen2Pattern,
            "llama-bpe" or "llama3" or "smaug-bpe" => Llama3Pattern,
            "gpt2" or "default" or "gpt-2" => Gpt2Pattern,
            _ => throw new NotSupportedException($"BPE pre-tokenizer '{vocabulary.PreTokenizer}' is not supported (gpt2, qwen2, llama-bpe)"),
        };
        splitter = new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);
    }

    /// <summary>GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards in byte order.</summary>
    static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    protected override void EncodeText(string text, bool afterSpecial, List<int> output)
    {
        foreach (Match word in splitter.Matches(text))
        {
            byte[] bytes = Encoding.UTF8.GetBytes(word.Value);
            var mapped = new StringBuilder(bytes.Length);
            foreach (byte b in bytes) mapped.Append(ByteToChar[b]);
            EncodeWord(mapped.ToString(), output);
        }
    }

    void EncodeWord(string word, List<int> output)
    {
        if (Vocabulary.IgnoreMerges && Vocabulary.TryGetId(word, out int whole))
        {
            output.Add(whole);
            return;
        }
        // Symbols are the characters of the mapped word (all in the BMP), linked so merges can unlink the right one.
        int n = word.Length;
        var start = new int[n];
        var length = new int[n];
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++) { start[i] = i; length[i] = 1; prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }

        var queue = new PriorityQueue<(int Left, int Right, string Text), (int Rank, int Left)>(
            Comparer<(int Rank, int Left)>.Create((a, b) => a.Rank != b.Rank ? a.Rank.CompareTo(b.Rank) : a.Left.CompareTo(b.Left)));

        void TryAddPair(int left, int right)
        {
            if (left < 0 || right < 0) return;
            string l = word.Substring(start[left], length[left]), r = word.Substring(start[right], length[right]);
            int rank = Vocabulary.MergeRank(l, r);
            if (rank >= 0) queue.Enqueue((left, right, l + r), (rank, left));
        }

        for (int i = 1; i < n; i++) TryAddPair(i - 1, i);
        while (queue.TryDequeue(out var pair, out _))
        {
            if (length[pair.Left] == 0 || length[pair.Right] == 0) continue;
            if (length[pair.Left] + length[pair.Right] != pair.Text.Length
                || string.CompareOrdinal(word, start[pair.Left], pair.Text, 0, pair.Text.Length) != 0) continue;
            length[pair.Left] += length[pair.Right];
            length[pair.Right] = 0;
            next[pair.Left] = next[pair.Right];
            if (next[pair.Right] >= 0) prev[next[pair.Right]] = pair.Left;
            TryAddPair(prev[pair.Left], pair.Left);
            TryAddPair(pair.Left, next[pair.Left]);
        }

        for (int i = 0; i != -1; i = next[i])
        {
            string piece = word.Substring(start[i], length[i]);
            if (Vocabulary.TryGetId(piece, out int id))
            {
                output.Add(id);
                continue;
            }
            // Not a token: fall back to single-byte tokens of the piece's UTF-8 bytes where they exist.
            foreach (byte b in Encoding.UTF8.GetBytes(piece))
                if (b < 0x80 && Vocabulary.TryGetId(((char)b).ToString(), out int byteId)) output.Add(byteId);
        }
    }

    protected override byte[] NormalPiece(string text)
    {
        var bytes = new byte[text.Length];
        int count = 0;
        foreach (char c in text)
        {
            if (CharToByte.TryGetValue(c, out byte b)) bytes[count++] = b;
            else foreach (byte u in Encoding.UTF8.GetBytes(c.ToString())) { Array.Resize(ref bytes, bytes.Length + 4); bytes[count++] = u; }
        }
        return bytes[..count];
    }
}
