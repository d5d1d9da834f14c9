using Microsoft.AspNetCore.Http;

namespace VidKV.Server;

/// <summary>
/// The server's <see cref="ServerOptions.MaxSessions"/>: a chat request being answered and a live session until it is
/// deleted each hold one slot; a request that finds none free gets 429.
/// </summary>
sealed class SessionSlots(int count)
{
    readonly SemaphoreSlim free = new(count, count);

    /// <summary>Slots held now.</summary>
    public int Held => count - free.CurrentCount;

    /// <summary>Takes a slot, or throws the 429 that says why not.</summary>
    public void Take()
    {
        if (!free.Wait(0))
            throw new ApiException(StatusCodes.Status429TooManyRequests, "rate_limit_error",
                $"the server holds {count} sessions and requests already (its --max-sessions; a live session counts until it is deleted); try again when one has finished",
                code: "too_many_sessions");
    }

    public void Release() => free.Release();
}
