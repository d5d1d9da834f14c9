using System.Security.Cryptography;

namespace VidKV.Cli;

/// <summary>
/// The built-in default model: the tiny vision-language model trained here on the generated video world
/// (<c>models/world-tiny</c> in the repository, copied beside the program at build: <c>model.gguf</c>,
/// <c>mmproj.gguf</c> and their <c>SHA256SUMS</c>; retrained by the command in that folder's README). It knows only the
/// world's shapes, colours and events.
/// </summary>
static class BuiltInModel
{
    /// <summary>The folder beside the program that holds the pair.</summary>
    public static string Folder { get; } = Path.Combine(AppContext.BaseDirectory, "models", "world-tiny");

    /// <summary>The text model's and projector's paths, each checked against its SHA-256 in <c>SHA256SUMS</c> (once per process).</summary>
    /// <exception cref="ArgumentException">a file is missing or is not the file that was shipped</exception>
    public static (string Text, string Projector) Locate() => located.Value;

    /// <summary>
    /// The pair a command was given (<paramref name="model"/> with <paramref name="mmproj"/>), or the built-in pair when
    /// it was given neither.
    /// </summary>
    /// <exception cref="ArgumentException">only one of the two was given, or the built-in pair is not whole</exception>
    public static (string Text, string Projector) Or(string? model, string? mmproj) => (model, mmproj) switch
    {
        (null, null) => Locate(),
        ({ } m, { } p) => (m, p),
        (null, _) => throw new ArgumentException("--mmproj needs -m: the text model it goes with (or neither, for the built-in model)"),
        _ => throw new ArgumentException("-m needs --mmproj: the vision projector (mmproj GGUF) that goes with it (or neither, for the built-in model)"),
    };

    static readonly Lazy<(string, string)> located = new(() =>
    {
        string sums = Path.Combine(Folder, "SHA256SUMS");
        if (!File.Exists(sums)) throw new ArgumentException($"the built-in model is missing ({sums} not found); build the project again, or pass -m and --mmproj");
        foreach (string line in File.ReadAllLines(sums).Where(l => l.Trim().Length > 0))
        {
            string[] parts = line.Split(' ', 2, StringSplitOptions.TrimEntries);
            string path = Path.Combine(Folder, parts[1].TrimStart('*'));
            if (!File.Exists(path)) throw new ArgumentException($"the built-in model is missing {path}; build the project again, or pass -m and --mmproj");
            using var file = File.OpenRead(path);
            string actual = Convert.ToHexStringLower(SHA256.HashData(file));
            if (actual != parts[0].ToLowerInvariant())
                throw new ArgumentException($"{path}: SHA-256 {actual} is not the shipped file's {parts[0]} (listed in {sums}); a Git LFS pointer or a partial copy? Retrain or restore it");
        }
        return (Path.Combine(Folder, "model.gguf"), Path.Combine(Folder, "mmproj.gguf"));
    });
}
