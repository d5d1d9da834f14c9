using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using VidKV.Video;

namespace VidKV.Server;

/// <summary>
/// <c>POST /v1/uploads</c>: a video file sent as the request body (at most <see cref="ServerOptions.MaxUploadBytes"/>,
/// else 413) goes into a folder the server made for itself and is probed with ffprobe at once, so a body that is not a
/// video is a 400 saying why. A live session then watches it as the source <c>upload:ID</c> and owns the file from
/// there: deleting the session deletes it. Uploads no session has taken are kept, newest first, up to
/// <see cref="ServerOptions.MaxSessions"/> (an older one is deleted), and the folder goes when the server stops, so the
/// disk the uploads take stays bounded.
/// </summary>
sealed partial class Uploads : IDisposable
{
    /// <summary>The prefix of a live session's source that names an upload.</summary>
    public const string SourcePrefix = "upload:";

    readonly string folder;
    readonly long maxBytes;
    readonly int maxWaiting;
    readonly LinkedList<(string Id, string Path, string Name)> waiting = []; // oldest first; under the lock

    public Uploads(long maxBytes, int maxWaiting)
    {
        this.maxBytes = maxBytes;
        this.maxWaiting = maxWaiting;
        folder = Directory.CreateTempSubdirectory("vidkv-uploads-").FullName; // mode 700: this user's only
    }

    /// <summary>The folder uploads are written to (tests look at it).</summary>
    public string Folder => folder;

    [GeneratedRegex(@"^\.[A-Za-z0-9]{1,5}$")]
    private static partial Regex PlainExtension();

    public async Task HandleAsync(HttpContext context)
    {
        string name = Path.GetFileName(context.Request.Query["filename"].FirstOrDefault() ?? "") is { Length: > 0 } given ? Shorten(given) : "upload";
        if (context.Request.ContentLength > maxBytes) throw TooLarge();
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = maxBytes;
        string id = "upload_" + RandomNumberGenerator.GetHexString(24, lowercase: true);
        // The file keeps the name's extension, if a plain one, for the player's sake; ffmpeg reads the content, not the name.
        string extension = Path.GetExtension(name) is var e && PlainExtension().IsMatch(e) ? e.ToLowerInvariant() : "";
        string path = Path.Combine(folder, id + extension);
        long length;
        VideoInfo info;
        try
        {
            await using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true))
            {
                try
                {
                    await context.Request.Body.CopyToAsync(file, context.RequestAborted).ConfigureAwait(false);
                }
                catch (BadHttpRequestException bad) when (bad.StatusCode == StatusCodes.Status413PayloadTooLarge)
                {
                    throw TooLarge();
                }
                length = file.Length;
            }
            if (length == 0) throw ApiException.BadRequest("the upload is empty: send the video file as the request body", "body", "empty_upload");
            try
            {
                info = await new FfmpegSource(path).ProbeAsync(context.RequestAborted).ConfigureAwait(false);
            }
            catch (VideoSourceException problem)
            {
                string why = problem.Message.StartsWith(problem.SourceName + ": ", StringComparison.Ordinal) ? problem.Message[(problem.SourceName.Length + 2)..] : problem.Message;
                throw ApiException.BadRequest($"'{name}' ({length} bytes) cannot be read as a video: {why}", "body", "invalid_video");
            }
        }
        catch
        {
            File.Delete(path);
            throw;
        }
        lock (waiting)
        {
            waiting.AddLast((id, path, name));
            while (waiting.Count > maxWaiting)
            {
                File.Delete(waiting.First!.Value.Path);
                waiting.RemoveFirst();
            }
        }
        context.Response.StatusCode = StatusCodes.Status201Created;
        await context.Response.WriteAsJsonAsync(new UploadInfo(id, name, length, info.Duration?.TotalSeconds, info.Width, info.Height, SourcePrefix + id),
            Wire.UploadInfo, contentType: "application/json", context.RequestAborted).ConfigureAwait(false);
    }

    ApiException TooLarge() => new(StatusCodes.Status413PayloadTooLarge, "invalid_request_error",
        $"the upload is larger than the server's limit of {maxBytes} bytes (--max-upload)", "body", "request_too_large");

    /// <summary>
    /// Hands the upload <paramref name="id"/> to a session: the returned file is its to delete. 400 naming
    /// <paramref name="param"/> when no upload waits under that id (never made, taken already, or dropped for newer ones).
    /// </summary>
    public (VideoFile File, string Name) Take(string id, string param)
    {
        lock (waiting)
            for (var node = waiting.First; node != null; node = node.Next)
                if (node.Value.Id == id)
                {
                    waiting.Remove(node);
                    return (new VideoFile(node.Value.Path, temporary: true), node.Value.Name);
                }
        throw ApiException.BadRequest($"no upload '{Shorten(id)}' is waiting (POST the video to /v1/uploads first; an upload is watched once)", param, "upload_not_found");
    }

    /// <summary>Deletes the folder and every upload in it (the server is stopping; its sessions have deleted theirs).</summary>
    public void Dispose()
    {
        lock (waiting) waiting.Clear();
        try { Directory.Delete(folder, recursive: true); }
        catch (DirectoryNotFoundException) { }
    }

    static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";
}
