namespace VidKV.Formats;

/// <summary>
/// A model file (or its metadata) is unusable. The message is one line naming the file, where (offset, tensor or
/// key) and what is wrong; the CLI prints it as is and exits with code 2.
/// </summary>
public sealed class ModelFormatException(string message) : Exception(message)
{
    /// <summary>"file: offset N: problem".</summary>
    public static ModelFormatException AtOffset(string path, long offset, string problem) => new($"{path}: offset {offset}: {problem}");

    /// <summary>"file: tensor 'name': problem".</summary>
    public static ModelFormatException AtTensor(string path, string tensor, string problem) => new($"{path}: tensor '{tensor}': {problem}");

    /// <summary>"file: problem".</summary>
    public static ModelFormatException InFile(string path, string problem) => new($"{path}: {problem}");
}
