using VidKV.Formats;

namespace VidKV.Server;

/// <summary>
/// Turns an <c>image_url</c> into an image: a <c>data:</c> URL with base64 PNG/JPEG/BMP/PPM bytes, or a file under the
/// media root given as <c>file://</c> URL or plain path (relative paths are relative to the root). A path is followed
/// through every symbolic link before it is checked, and the file read is the resolved one, so neither <c>..</c> nor a
/// link inside the root reaches a file outside it. http(s) URLs are refused for now. Errors name the request field.
/// </summary>
sealed class MediaFiles
{
    /// <summary>Most symbolic links one path may go through (as Linux's <c>MAXSYMLINKS</c>).</summary>
    const int MaxLinks = 40;

    readonly string? root; // resolved, without a trailing separator (except "/" itself)
    readonly string? givenRoot; // as given (made absolute): a client may name files through it
    readonly long maxBytes;

    /// <param name="root">the folder files may come from (null: no files, only data URLs)</param>
    /// <param name="maxBytes">largest image file read</param>
    public MediaFiles(string? root, long maxBytes)
    {
        if (root != null)
        {
            if (!Directory.Exists(root)) throw new ArgumentException($"media root '{root}': no such folder");
            this.root = Resolve(root);
            givenRoot = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        }
        this.maxBytes = maxBytes;
    }

    /// <summary>The resolved media root (null when files are not served).</summary>
    public string? Root => root;

    /// <summary>Loads the image <paramref name="url"/> names; <paramref name="param"/> is its place in the request, for errors.</summary>
    public RgbImage Load(string url, string param)
    {
        byte[] bytes;
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase)) bytes = DataUrl(url, param);
        else if (url.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || url.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest("http(s) image URLs are not supported yet: send the image as a data URL (data:image/png;base64,…) or as a file under the server's --media-root", param);
        else if (url.StartsWith("file:", StringComparison.OrdinalIgnoreCase))
        {
            if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || !uri.IsFile || !string.IsNullOrEmpty(uri.Host))
                throw ApiException.BadRequest("not a local file URL (file:///path/to/image.png)", param);
            bytes = ReadFile(uri.LocalPath, param);
        }
        else if (url.Contains("://", StringComparison.Ordinal)) throw ApiException.BadRequest($"unsupported URL scheme in '{Shorten(url)}': use a data URL or a file under --media-root", param);
        else bytes = ReadFile(url, param);
        try
        {
            return ImageReader.Decode(bytes, param);
        }
        catch (ImageFormatException e)
        {
            throw new ApiException(400, "invalid_request_error", e.Message, param, "invalid_image");
        }
    }

    static byte[] DataUrl(string url, string param)
    {
        // data:[<media type>][;base64],<data>
        int comma = url.IndexOf(',');
        if (comma < 0) throw ApiException.BadRequest("a data URL needs a ',' before its data (data:image/png;base64,…)", param);
        string header = url[5..comma];
        if (!header.EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"only base64 data URLs are read (data:image/png;base64,…), not 'data:{Shorten(header)},'", param);
        string mediaType = header[..^";base64".Length];
        if (mediaType.Length > 0 && !mediaType.StartsWith("image/", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"the data URL's media type '{Shorten(mediaType)}' is not an image type", param);
        try
        {
            return Convert.FromBase64String(url[(comma + 1)..]);
        }
        catch (FormatException)
        {
            throw ApiException.BadRequest("the data URL's data is not valid base64", param);
        }
    }

    byte[] ReadFile(string path, string param)
    {
        if (root == null)
            throw ApiException.BadRequest("local image files are not served: start the server with --media-root DIR, or send the image as a data URL", param);
        if (path.Length == 0 || path.Contains('\0')) throw ApiException.BadRequest("empty or invalid file path", param);
        // A lexical check first, so a path outside the root learns nothing of what exists there.
        string lexical = Path.GetFullPath(path, root);
        if (!IsUnderRoot(lexical, root) && !IsUnderRoot(lexical, givenRoot!)) throw ApiException.BadRequest($"'{Shorten(path)}' is outside the media root", param, "outside_media_root");
        string resolved;
        try
        {
            resolved = Resolve(lexical);
        }
        catch (IOException e)
        {
            throw ApiException.BadRequest($"'{Shorten(path)}': {e.Message}", param);
        }
        if (!IsUnderRoot(resolved, root))
            throw ApiException.BadRequest($"'{Shorten(path)}' leads outside the media root through a symbolic link", param, "outside_media_root");
        var file = new FileInfo(resolved);
        if (!file.Exists)
            throw ApiException.BadRequest(Directory.Exists(resolved) ? $"'{Shorten(path)}' is a folder, not an image file" : $"'{Shorten(path)}': no such file under the media root", param);
        if (file.Length > maxBytes) throw ApiException.BadRequest($"'{Shorten(path)}' is {file.Length} bytes, over the server's limit of {maxBytes}", param);
        try
        {
            return File.ReadAllBytes(resolved);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw ApiException.BadRequest($"'{Shorten(path)}' cannot be read: {e.Message}", param);
        }
    }

    static bool IsUnderRoot(string path, string folder) =>
        folder == "/" || path == folder || path.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    /// <summary>
    /// The absolute path with every symbolic link resolved, as realpath(3) gives it: components are walked from the
    /// root; a link's target replaces it (relative targets from the link's folder) and is walked in turn. Components
    /// that do not exist are kept as they are.
    /// </summary>
    /// <exception cref="IOException">more than <see cref="MaxLinks"/> links (a loop)</exception>
    internal static string Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        string resolved = Path.GetPathRoot(full)!;
        var rest = new LinkedList<string>(full[resolved.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries));
        int links = 0;
        while (rest.First is { } node)
        {
            string part = node.Value;
            rest.RemoveFirst();
            if (part == ".") continue;
            if (part == "..")
            {
                resolved = Path.GetDirectoryName(resolved) ?? resolved;
                continue;
            }
            string next = Path.Combine(resolved, part);
            string? target;
            try
            {
                target = new FileInfo(next).LinkTarget;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                target = null; // missing, not a folder, unreadable: not a link; reading the file says what is wrong
            }
            if (target == null)
            {
                resolved = next;
                continue;
            }
            if (++links > MaxLinks) throw new IOException($"more than {MaxLinks} symbolic links (a loop?)");
            if (Path.IsPathRooted(target)) resolved = Path.GetPathRoot(target)!;
            var parts = target.Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
            for (int i = parts.Length - 1; i >= 0; i--) rest.AddFirst(parts[i]);
        }
        return resolved;
    }

    /// <summary>At most 80 characters of something a client sent, for an error message.</summary>
    static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";
}
