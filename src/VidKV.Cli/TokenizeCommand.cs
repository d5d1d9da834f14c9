using System.CommandLine;
using System.Text;
using VidKV.Formats;
using VidKV.Text;

namespace VidKV.Cli;

/// <summary><c>vidkv tokenize</c>: like llama-tokenize, from a model's vocabulary only.</summary>
static class TokenizeCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(required: true);
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Text to tokenise." };
        var file = new Option<string?>("--file", "-f") { Description = "Read the text from this file." };
        var stdin = new Option<bool>("--stdin") { Description = "Read the text from standard input." };
        var ids = new Option<bool>("--ids") { Description = "Print only the ids, as [1, 2, 3]." };
        var noBos = new Option<bool>("--no-bos") { Description = "Do not add BOS/EOS even if the vocabulary asks for them." };
        var noParseSpecial = new Option<bool>("--no-parse-special") { Description = "Treat special-token text as plain text." };

        var command = new Command("tokenize", "Turn text into token ids with a model's tokenizer.").With(model, prompt, file, stdin, ids, noBos, noParseSpecial);
        command.SetAction(r =>
        {
            string text = r.GetValue(stdin) ? new StreamReader(Console.OpenStandardInput(), Encoding.UTF8).ReadToEnd()
                : r.GetValue(file) is { } f ? File.ReadAllText(f)
                : r.GetValue(prompt) ?? throw new ArgumentException("give the text with -p, -f or --stdin");
            using var gguf = GgufFile.Open(r.GetValue(model)!);
            var tokenizer = Tokenizer.Create(Vocabulary.FromGguf(gguf));
            var tokens = tokenizer.Encode(text, addSpecial: !r.GetValue(noBos), parseSpecial: !r.GetValue(noParseSpecial));
            if (r.GetValue(ids)) Console.WriteLine($"[{string.Join(", ", tokens)}]");
            else foreach (int id in tokens) Console.WriteLine($"{id,6} -> '{Encoding.UTF8.GetString(tokenizer.TokenToPiece(id))}'");
            return 0;
        });
        return command;
    }
}
