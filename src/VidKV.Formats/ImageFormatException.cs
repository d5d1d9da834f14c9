namespace VidKV.Formats;

/// <summary>
/// An image file is unusable: empty, of an unsupported kind, truncated or corrupt. The message is one line,
/// "file: problem"; the CLI prints it as is and exits with code 2. A missing file is a
/// <see cref="FileNotFoundException"/> instead.
/// </summary>
public sealed class ImageFormatException : Exception
{
    /// <summary>"<paramref name="name"/>: <paramref name="problem"/>", with the decoder's exception if there was one.</summary>
    public ImageFormatException(string name, string problem, Exception? inner = null) : base($"{name}: {problem}", inner) { }
}
