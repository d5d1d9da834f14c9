using VidKV.Formats;

namespace VidKV.Server;

/// <summary>
/// Turns an <c>image_url</c> into an image: a <c>data:</c> URL with base64 PNG/JPEG/BMP/PPM bytes, or a file under the
/// media root given as <c>file://</c> URL or plain path (relative paths are relative to the root). A path is followed
/// through every symbolic link before it is checked, and the file read is the resolved one, so neither <c>..</c> nor a
/// link inside the root reaches a file outside it. http(s) image URLs are refused for now. Videos
/// (<see cref="OpenVideoAsync"/>) come the same ways and from http(s) URLs too, fetched to a temporary file under a
/// size and a time limit. Errors name the request field.
/// </summary>
sealed class MediaFiles
{
    /// <summary>Most symbolic links one path may go through (as Linux's <c>MAXSYMLINKS</c>).</summary>
    const int MaxLinks = 40;

    readonly string? root; // resolved, without a trailing separator (except "/" itself)
    readonly string? givenRoot; // as given (made absolute): a client may name files through it
    readonly long maxBytes;
    readonly TimeSpan fetchTimeout;

    /// <param name="root">the folder files may come from (null: no files, only data URLs)</param>
    /// <param name="maxBytes">largest image file read, and largest video fetched from a URL</param>
    /// <param name="fetchTimeout">longest a video URL may take to arrive whole</param>
    public MediaFiles(string? root, long maxBytes, TimeSpan fetchTimeout)
    {
        this.fetchTimeout = fetchTimeout;
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

    static byte[] DataUrl(string url, string param, string kind = "image")
    {
        // data:[<media type>][;base64],<data>
        int comma = url.IndexOf(',');
        if (comma < 0) throw ApiException.BadRequest("a data URL needs a ',' before its data (data:image/png;base64,…)", param);
        string header = url[5..comma];
        if (!header.EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"only base64 data URLs are read (data:image/png;base64,…), not 'data:{Shorten(header)},'", param);
        string mediaType = header[..^";base64".Length];
        if (mediaType.Length > 0 && !mediaType.StartsWith(kind + "/", StringComparison.OrdinalIgnoreCase)
            && !(kind == "video" && mediaType.Equals("application/octet-stream", StringComparison.OrdinalIgnoreCase)))
            throw ApiException.BadRequest($"the data URL's media type '{Shorten(mediaType)}' is not {(kind == "image" ? "an image" : "a video")} type", param);
        return Base64(url[(comma + 1)..], param);
    }

    static byte[] Base64(string data, string param)
    {
        try
        {
            return Convert.FromBase64String(data);
        }
        catch (FormatException)
        {
            throw ApiException.BadRequest("the data URL's data is not valid base64", param);
        }
    }

    byte[] ReadFile(string path, string param)
    {
        string resolved = ResolveFile(path, param, "image");
        var file = new FileInfo(resolved);
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

    /// <summary>
    /// The real path of the file <paramref name="path"/> names under the media root (a <c>file://</c> URL or a path,
    /// relative ones from the root), every symbolic link resolved; 400 naming <paramref name="param"/> when there is no
    /// media root, the path leads outside it, or no such file is there.
    /// </summary>
    public string ResolveFile(string path, string param, string kind)
    {
        if (path.StartsWith("file:", StringComparison.OrdinalIgnoreCase))
        {
            if (!Uri.TryCreate(path, UriKind.Absolute, out var uri) || !uri.IsFile || !string.IsNullOrEmpty(uri.Host))
                throw ApiException.BadRequest($"not a local file URL (file:///path/to/{kind}.{(kind == "image" ? "png" : "mp4")})", param);
            path = uri.LocalPath;
        }
        if (root == null)
            throw ApiException.BadRequest($"local {kind} files are not served: start the server with --media-root DIR, or send the {kind} as a data URL", param);
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
        if (!File.Exists(resolved))
            throw ApiException.BadRequest(Directory.Exists(resolved) ? $"'{Shorten(path)}' is a folder, not {(kind == "image" ? "an image" : "a video")} file" : $"'{Shorten(path)}': no such file under the media root", param);
        return resolved;
    }

    /// <summary>
    /// A video a chat message names, as a local file for ffmpeg: a file under the media root as it is; a <c>data:</c>
    /// URL's bytes (or, as llama-server takes <c>input_video.data</c>, plain base64) and an http(s) URL's body written
    /// to a temporary file, which the returned handle deletes. An http(s) URL that is unreachable, answers with an
    /// error, sends more than the size limit or takes longer than the time limit is a 400 naming
    /// <paramref name="param"/>; the request's abort stops the fetch.
    /// </summary>
    public async Task<VideoFile> OpenVideoAsync(string url, string param, bool plainBase64, CancellationToken cancellation)
    {
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase)) return VideoFile.Temporary(DataUrl(url, param, "video"));
        if (url.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || url.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            return await FetchAsync(url, param, cancellation).ConfigureAwait(false);
        if (url.StartsWith("file:", StringComparison.OrdinalIgnoreCase)) return new VideoFile(ResolveFile(url, param, "video"), temporary: false);
        if (url.Contains("://", StringComparison.Ordinal)) throw ApiException.BadRequest($"unsupported URL scheme in '{Shorten(url)}': use a data URL, an http(s) URL or a file under --media-root", param);
        if (plainBase64) return VideoFile.Temporary(Base64(url, param));
        return new VideoFile(ResolveFile(url, param, "video"), temporary: false);
    }

    static readonly HttpClient Http = new(new SocketsHttpHandler { AllowAutoRedirect = true, MaxAutomaticRedirections = 5, ConnectTimeout = Timeout.InfiniteTimeSpan })
    {
        Timeout = Timeout.InfiniteTimeSpan, // each fetch has its own limit
    };

    async Task<VideoFile> FetchAsync(string url, string param, CancellationToken cancellation)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri)) throw ApiException.BadRequest($"'{Shorten(url)}' is not a valid URL", param);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        limit.CancelAfter(fetchTimeout);
        var file = VideoFile.Temporary([]);
        try
        {
            using var response = await Http.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, limit.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                throw ApiException.BadRequest($"fetching '{Shorten(url)}' gave HTTP {(int)response.StatusCode} {response.ReasonPhrase}", param, "media_fetch_failed");
            if (response.Content.Headers.ContentLength is long length && length > maxBytes)
                throw ApiException.BadRequest($"'{Shorten(url)}' is {length} bytes, over the server's limit of {maxBytes}", param, "media_too_large");
            await using var body = await response.Content.ReadAsStreamAsync(limit.Token).ConfigureAwait(false);
            await using var output = new FileStream(file.Path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
            var buffer = new byte[1 << 16];
            long total = 0;
            for (int n; (n = await body.ReadAsync(buffer, limit.Token).ConfigureAwait(false)) > 0;)
            {
                total += n;
                if (total > maxBytes) throw ApiException.BadRequest($"'{Shorten(url)}' sends more than the server's limit of {maxBytes} bytes", param, "media_too_large");
                await output.WriteAsync(buffer.AsMemory(0, n), limit.Token).ConfigureAwait(false);
            }
            return file;
        }
        catch (OperationCanceledException) when (!cancellation.IsCancellationRequested)
        {
            file.Dispose();
            throw ApiException.BadRequest($"fetching '{Shorten(url)}' took longer than the server's limit of {fetchTimeout.TotalSeconds:0.#} s", param, "media_fetch_timeout");
        }
        catch (HttpRequestException e)
        {
            file.Dispose();
            throw ApiException.BadRequest($"fetching '{Shorten(url)}' failed: {e.Message}", param, "media_fetch_failed");
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The file name extensions <see cref="ListVideos"/> counts as video (ffmpeg reads the content, whatever the name).</summary>
    static readonly HashSet<string> VideoExtensions = new(StringComparer.OrdinalIgnoreCase)
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".mpg", ".mpeg", ".ogv", ".3gp", ".wmv",
    };

    /// <summary>
    /// The video files under the media root (by name; hidden files and folders left out), as paths relative to it with
    /// <c>/</c> between folders, sorted, at most <paramref name="most"/> (then <c>Truncated</c>). Each is resolved
    /// through its symbolic links as <see cref="ResolveFile"/> resolves a path, and one that leads outside the root is
    /// not listed, so the listing names only files a session may read. Empty when there is no media root.
    /// </summary>
    public (List<MediaEntry> Files, bool Truncated) ListVideos(int most)
    {
        var files = new List<MediaEntry>();
        if (root == null) return (files, false);
        var walk = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, MaxRecursionDepth = 16 };
        bool truncated = false;
        foreach (string path in Directory.EnumerateFiles(root, "*", walk))
        {
            if (!VideoExtensions.Contains(Path.GetExtension(path))) continue;
            string resolved;
            try
            {
                resolved = Resolve(path);
            }
            catch (IOException)
            {
                continue; // a link loop
            }
            var file = new FileInfo(resolved);
            if (!IsUnderRoot(resolved, root) || !file.Exists) continue;
            if (files.Count == most)
            {
                truncated = true;
                break;
            }
            files.Add(new MediaEntry(Path.GetRelativePath(root, path).Replace(Path.DirectorySeparatorChar, '/'), file.Length,
                new DateTimeOffset(file.LastWriteTimeUtc).ToUnixTimeSeconds()));
        }
        files.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return (files, truncated);
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

/// <summary>A video file for ffmpeg to read: one under the media root, or a temporary copy that <see cref="Dispose"/> deletes.</summary>
sealed class VideoFile(string path, bool temporary) : IDisposable
{
    public string Path { get; } = path;

    /// <summary>A new temporary file holding <paramref name="bytes"/> (readable by this user only).</summary>
    public static VideoFile Temporary(byte[] bytes)
    {
        string path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"vidkv-video-{Guid.NewGuid():N}");
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var file = new FileStream(path, options)) file.Write(bytes);
        return new VideoFile(path, temporary: true);
    }

    public void Dispose()
    {
        if (!temporary) return;
        try { File.Delete(Path); }
        catch (IOException) { } // already gone
    }
}
