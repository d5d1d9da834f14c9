using System.Text.Json;

namespace VidKV.Tests;

/// <summary>
/// Finds the llama.cpp reference vectors: <c>$VIDKV_TESTDATA</c> if set, else <c>../shared/testdata</c> beside the
/// repository root. A missing folder fails the test with a message saying where it looked; it never skips.
/// </summary>
public static class TestData
{
    public const string EnvironmentVariable = "VIDKV_TESTDATA";

    static readonly Lazy<string> root = new(Locate);

    public static string Root => root.Value;

    public static string RepositoryRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "VidKV.slnx"))) return dir.FullName;
            throw new InvalidOperationException($"cannot find the repository root (VidKV.slnx) above {AppContext.BaseDirectory}");
        }
    }

    static string Locate()
    {
        string? fromEnvironment = Environment.GetEnvironmentVariable(EnvironmentVariable);
        string path = !string.IsNullOrEmpty(fromEnvironment)
            ? fromEnvironment
            : Path.GetFullPath(Path.Combine(RepositoryRoot, "..", "shared", "testdata"));
        if (!File.Exists(Path.Combine(path, "README.md")))
            throw new InvalidOperationException(
                $"llama.cpp reference test data not found at '{path}'. Put the shared folder beside the repository (../shared/testdata) or set {EnvironmentVariable}.");
        return path;
    }

    public static string File_(string relative)
    {
        string path = Path.Combine(Root, relative);
        if (!File.Exists(path)) throw new InvalidOperationException($"test data file missing: {path}");
        return path;
    }

    public static string Model(string name) => File_(Path.Combine("models", name + ".gguf"));

    public static JsonElement Json(string relative) => JsonDocument.Parse(File.ReadAllBytes(File_(relative))).RootElement;

    public static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    public static byte[] Hex(string hex) => Convert.FromHexString(hex);
}
