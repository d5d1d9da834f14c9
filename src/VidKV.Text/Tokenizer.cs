using System.Text;

namespace VidKV.Text;

/// <summary>
/// Text ↔ token ids for one <see cref="Vocabulary"/>, with llama.cpp's semantics: special-token text is split out
/// first (control tokens only when <c>parseSpecial</c>), BOS/EOS are added when <c>addSpecial</c> and the vocabulary
/// asks for them, and pieces decode to exact bytes.
/// </summary>
public abstract class Tokenizer
{
    /// <summary>Binds the tokenizer to the vocabulary whose ids it produces; see <see cref="Create"/>.</summary>
    protected Tokenizer(Vocabulary vocabulary) => Vocabulary = vocabulary;

    /// <summary>The vocabulary whose ids this tokenizer produces and decodes.</summary>
    public Vocabulary Vocabulary { get; }

    /// <summary>Builds the tokenizer the vocabulary calls for.</summary>
    public static Tokenizer Create(Vocabulary vocabulary) => vocabulary.Kind switch
    {
        VocabularyKind.SentencePiece => new SentencePieceTokenizer(vocabulary),
        _ => new ByteLevelBpeTokenizer(vocabulary),
    };

    /// <summary>Token ids of <paramref name="text"/>.</summary>
    /// <param name="addSpecial">Add BOS/EOS where the vocabulary asks for them.</param>
    /// <param name="parseSpecial">Match control-token text (e.g. <c>&lt;|im_start|&gt;</c>) as its token; off, such text is tokenised as plain text.</param>
    public List<int> Encode(string text, bool addSpecial = true, bool parseSpecial = true)
    {
        var output = new List<int>();
        if (addSpecial && Vocabulary.AddBos && Vocabulary.BosId >= 0) output.Add(Vocabulary.BosId);
        bool afterSpecial = true;
        foreach (var (fragment, token) in Partition(text, parseSpecial))
        {
            if (token >= 0)
            {
                output.Add(token);
                afterSpecial = true;
            }
            else
            {
                EncodeText(fragment!, afterSpecial, output);
                afterSpecial = false;
            }
        }
        if (addSpecial && Vocabulary.AddEos && Vocabulary.EosId >= 0) output.Add(Vocabulary.EosId);
        return output;
    }

    /// <summary>Tokenises a fragment that holds no special-token text.</summary>
    /// <param name="afterSpecial">True at the start of the text or right after a special token (SentencePiece adds its space prefix there).</param>
    protected abstract void EncodeText(string text, bool afterSpecial, List<int> output);

    /// <summary>Splits text at every occurrence of special-token text, longest tokens first, left to right.</summary>
    List<(string? Text, int Token)> Partition(string text, bool parseSpecial)
    {
        var fragments = new List<(string? Text, int Token)>();
        if (text.Length == 0) return fragments;
        fragments.Add((text, -1));
        foreach (int id in Vocabulary.SpecialTokens)
        {
            var type = Vocabulary.Types[id];
            if (!parseSpecial && type is TokenType.Control or TokenType.Unknown) continue;
            string special = Vocabulary.Tokens[id];
            if (special.Length == 0) continue;
            for (int i = 0; i < fragments.Count; i++)
            {
                if (fragments[i].Token >= 0) continue;
                string raw = fragments[i].Text!;
                int match = raw.IndexOf(special, StringComparison.Ordinal);
                if (match < 0) continue;
                var pieces = new List<(string?, int)>();
                int start = 0;
                while (match >= 0)
                {
                    if (match > start) pieces.Add((raw[start..match], -1));
                    pieces.Add((null, id));
                    start = match + special.Length;
                    match = raw.IndexOf(special, start, StringComparison.Ordinal);
                }
                if (start < raw.Length) pieces.Add((raw[start..], -1));
                fragments.RemoveAt(i);
                fragments.InsertRange(i, pieces);
                i += pieces.Count - 1;
            }
        }
        return fragments;
    }

    /// <summary>The bytes a token stands for. Control and unknown tokens give their text only when <paramref name="special"/>.</summary>
    public byte[] TokenToPiece(int id, bool special = true)
    {
        if (id < 0 || id >= Vocabulary.Count) return [];
        var type = Vocabulary.Types[id];
        string text = Vocabulary.Tokens[id];
        if (type is TokenType.UserDefined || (special && type is TokenType.Control or TokenType.Unknown))
            return Encoding.UTF8.GetBytes(text);
        if (type is TokenType.Normal) return NormalPiece(text);
        if (type is TokenType.Byte && Vocabulary.Kind == VocabularyKind.SentencePiece) return [SentencePieceTokenizer.ByteValue(text)];
        return [];
    }

    /// <summary>The bytes of a normal token (SentencePiece: ▁ → space; byte-level BPE: unmapped bytes).</summary>
    protected abstract byte[] NormalPiece(string text);

    /// <summary>Concatenated pieces as UTF-8 bytes.</summary>
    public byte[] DecodeBytes(IEnumerable<int> ids, bool special = true)
    {
        var bytes = new List<byte>();
        foreach (int id in ids) bytes.AddRange(TokenToPiece(id, special));
        return bytes.ToArray();
    }

    /// <summary>Concatenated pieces decoded as UTF-8 (invalid sequences become U+FFFD).</summary>
    public string Decode(IEnumerable<int> ids, bool special = true) => Encoding.UTF8.GetString(DecodeBytes(ids, special));
}
