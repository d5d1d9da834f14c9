using Microsoft.AspNetCore.Http;

namespace VidKV.Server;

/// <summary>
/// A request the server refuses, with what is wrong and where: it becomes OpenAI's error body with
/// <see cref="StatusCode"/> (<c>{"error": {"message", "type", "param", "code"}}</c>).
/// </summary>
sealed class ApiException(int statusCode, string type, string message, string? param = null, string? code = null) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
    /// <summary>OpenAI's error type: <c>invalid_request_error</c>, <c>authentication_error</c>, …</summary>
    public string Type { get; } = type;
    /// <summary>The request field at fault (<c>messages[0].content[1].image_url.url</c>), when one is.</summary>
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public ErrorBody Body => new(new ErrorDetail(Message, Type, Param, Code));

    /// <summary>400: the request is malformed or a field is bad.</summary>
    public static ApiException BadRequest(string message, string? param = null, string? code = null) =>
        new(StatusCodes.Status400BadRequest, "invalid_request_error", param == null ? message : $"{param}: {message}", param, code);
}
