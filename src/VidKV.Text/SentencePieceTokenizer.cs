using System.Text;

namespace VidKV.Text;

/// <summary>
/// SentencePiece-style BPE as llama.cpp runs it for <c>tokenizer.ggml.model = llama</c>: spaces become ▁ (with a
/// leading ▁ at the start and after special tokens), UTF-8 characters are merged pairwise by highest token score
/// (ties: leftmost first), and anything left that is not a token falls back to <c>&lt;0xXX&gt;</c> byte tokens.
/// </summary>
internal sealed class SentencePieceTokenizer(Vocabulary vocabulary) : Tokenizer(vocabulary)
{
    const string SpaceMarker = "\u2581";

    struct Symbol
    {
        public int Prev, Next, Start, Length;
    }

    protected override void EncodeText(string text, bool afterSpecial, List<int> output)
    {
        if (Vocabulary.AddSpacePrefix && afterSpecial) text = " " + text;
        byte[] bytes = Encoding.UTF8.GetBytes(text.Replace(" ", SpaceMarker, StringComparison.Ordinal));
        if (bytes.Length == 0) return;

        var symbols = new List<Symbol>();
        for (int offset = 0; offset < bytes.Length;)
        {
            int length = Math.Min(Utf8Length(bytes[offset]), bytes.Length - offset);
            symbols.Add(new Symbol { Prev = symbols.Count - 1, Next = offset + length == bytes.Length ? -1 : symbols.Count + 1, Start = offset, Length = length });
            offset += length;
        }

        // Highest score first; on ties the leftmost pair.
        var queue = new PriorityQueue<(int Left, int Right, int Size), (float Score, int Left)>(
            Comparer<(float Score, int Left)>.Create((a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left)));
        var reverseMerges = new Dictionary<string, (int Left, int Right)>(StringComparer.Ordinal);
        var symbolArray = symbols.ToArray();

        void TryAddPair(int left, int right)
        {
            if (left < 0 || right < 0) return;
            string merged = Encoding.UTF8.GetString(bytes, symbolArray[left].Start, symbolArray[left].Length + symbolArray[right].Length);
            if (!Vocabulary.TryGetId(merged, out int id)) return;
            queue.Enqueue((left, right, symbolArray[left].Length + symbolArray[right].Length), (Vocabulary.Scores[id], left));
            reverseMerges[merged] = (left, right);
        }

        for (int i = 1; i < symbolArray.Length; i++) TryAddPair(i - 1, i);
        while (queue.TryDequeue(out var pair, out _))
        {
            ref Symbol left = ref symbolArray[pair.Left];
            ref Symbol right = ref symbolArray[pair.Right];
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != pair.Size) continue;
            left.Length += right.Length;
            right.Length = 0;
            left.Next = right.Next;
            if (right.Next >= 0) symbolArray[right.Next].Prev = pair.Left;
            TryAddPair(left.Prev, pair.Left);
            TryAddPair(pair.Left, left.Next);
        }

        void Resegment(int index)
        {
            ref Symbol symbol = ref symbolArray[index];
            string piece = Encoding.UTF8.GetString(bytes, symbol.Start, symbol.Length);
            if (Vocabulary.TryGetId(piece, out int id))
            {
                output.Add(id);
                return;
            }
            if (reverseMerges.TryGetValue(piece, out var parts))
            {
                Resegment(parts.Left);
                Resegment(parts.Right);
                return;
            }
            for (int j = 0; j < symbol.Length; j++) output.Add(ByteToken(bytes[symbol.Start + j]));
        }

        for (int i = 0; i != -1; i = symbolArray[i].Next) Resegment(i);
    }

    int ByteToken(byte value)
    {
        if (Vocabulary.TryGetId($"<0x{value:X2}>", out int id)) return id;
        if (value < 0x80 && Vocabulary.TryGetId(((char)value).ToString(), out id)) return id;
        return Vocabulary.UnknownId;
    }

    /// <summary>The byte a <c>&lt;0xXX&gt;</c> token stands for.</summary>
    internal static byte ByteValue(string text) =>
        text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) ? Convert.ToByte(text.Substring(3, 2), 16) : (byte)'?';

    protected override byte[] NormalPiece(string text) => Encoding.UTF8.GetBytes(text.Replace(SpaceMarker, " ", StringComparison.Ordinal));

    /// <summary>Length of a UTF-8 sequence from its first byte (continuation bytes count as 1, as in llama.cpp).</summary>
    static int Utf8Length(byte first) => (first >> 4) switch { < 12 => 1, 12 or 13 => 2, 14 => 3, _ => 4 };
}
