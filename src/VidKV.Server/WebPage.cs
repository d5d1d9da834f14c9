using System.Security.Cryptography;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace VidKV.Server;

/// <summary>
/// The web page at <c>/</c>: <c>Web/index.html</c> and its scripts and styles under <c>/assets/</c>, compiled into this
/// assembly as resources (no CDN, no fonts or scripts from elsewhere; the Content-Security-Policy says so to the
/// browser). On it a user picks a file under the media root, uploads a video or starts the demo clip, watches it, asks
/// questions and reads proactive comments as they stream in, and follows charts of KV memory, ingest frames/s and
/// tokens/s. It holds no secret, so it loads without the API key; the page asks for the key and sends it itself.
/// </summary>
sealed class WebPage
{
    const string ResourcePrefix = "web/";

    /// <summary>What the page may load: its own files, the session's video, and fetches to this server only.</summary>
    const string ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

    static readonly Dictionary<string, string> ContentTypes = new(StringComparer.OrdinalIgnoreCase)
    {
        [".html"] = "text/html; charset=utf-8",
        [".js"] = "text/javascript; charset=utf-8",
        [".css"] = "text/css; charset=utf-8",
        [".svg"] = "image/svg+xml",
    };

    sealed record Asset(byte[] Bytes, string ContentType, string ETag);

    readonly Dictionary<string, Asset> assets = new(StringComparer.Ordinal);

    public WebPage()
    {
        var assembly = typeof(WebPage).Assembly;
        foreach (string resource in assembly.GetManifestResourceNames())
        {
            if (!resource.StartsWith(ResourcePrefix, StringComparison.Ordinal)) continue;
            string name = resource[ResourcePrefix.Length..];
            if (!ContentTypes.TryGetValue(Path.GetExtension(name), out var type))
                throw new InvalidOperationException($"the page's file {name} has no content type (add its extension to WebPage.ContentTypes)");
            using var stream = assembly.GetManifestResourceStream(resource)!;
            var bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
            assets[name] = new Asset(bytes, type, $"\"{Convert.ToHexStringLower(SHA256.HashData(bytes))[..16]}\"");
        }
        if (!assets.ContainsKey("index.html")) throw new InvalidOperationException("the page's index.html is not among the server's resources");
    }

    /// <summary>The page's files by name (<c>index.html</c>, <c>app.js</c>, …), for tests.</summary>
    internal IEnumerable<string> Names => assets.Keys;

    /// <summary>Whether <paramref name="path"/> is the page or one of its files, which need no API key.</summary>
    public static bool IsPagePath(PathString path) => path.Value is "/" || path.StartsWithSegments("/assets", StringComparison.Ordinal);

    public void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/", (RequestDelegate)(context => SendAsync(context, "index.html")));
        app.MapGet("/assets/{name}", (RequestDelegate)(context => SendAsync(context, context.Request.RouteValues["name"] as string ?? "")));
    }

    Task SendAsync(HttpContext context, string name)
    {
        if (name == "index.html" && context.Request.Path.Value != "/" || !assets.TryGetValue(name, out var asset))
            throw new ApiException(StatusCodes.Status404NotFound, "invalid_request_error", $"the page has no file '{(name.Length <= 80 ? name : name[..77] + "...")}'", code: "not_found");
        var response = context.Response;
        response.Headers.ETag = asset.ETag;
        response.Headers.CacheControl = "no-cache"; // revalidated each load: a new server's page is never stale
        response.Headers.XContentTypeOptions = "nosniff";
        response.Headers.ContentSecurityPolicy = ContentSecurityPolicy;
        response.Headers["Referrer-Policy"] = "no-referrer";
        if (context.Request.Headers.IfNoneMatch.Contains(asset.ETag))
        {
            response.StatusCode = StatusCodes.Status304NotModified;
            return Task.CompletedTask;
        }
        response.ContentType = asset.ContentType;
        response.ContentLength = asset.Bytes.Length;
        return response.Body.WriteAsync(asset.Bytes, context.RequestAborted).AsTask();
    }
}
