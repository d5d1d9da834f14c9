using System.Diagnostics;

namespace VidKV.Models;

/// <summary>The phases a forward pass is timed in (see <see cref="ForwardTimes"/>).</summary>
public enum ForwardPhase
{
    /// <summary>The query, key and value projections (with their biases).</summary>
    QkvProjection,
    /// <summary>Storing the batch's keys and values in the KV cache.</summary>
    KvAppend,
    /// <summary>The KV cache's attention (page selection, recall, kernel and policy updates).</summary>
    Attention,
    /// <summary>The attention output projection.</summary>
    OutputProjection,
    /// <summary>The feed-forward gate and up projections.</summary>
    GateUp,
    /// <summary>The feed-forward down projection.</summary>
    Down,
    /// <summary>The output head: final-norm rows times the vocabulary matrix, for rows that need logits.</summary>
    LmHead,
    /// <summary>Everything else: embedding, norms, RoPE, activations, residuals.</summary>
    Other,
}

/// <summary>
/// Stopwatch ticks of forward passes per phase, summed: the weight products (q/k/v, attention output, feed-forward
/// gate and up, down, the output head), the KV cache's append and attention (its own split is
/// <see cref="Cache.KvPhaseTimes"/>), and everything else (embedding, norms, RoPE, biases, activations, residuals).
/// </summary>
public struct ForwardTimes
{
    /// <summary>Ticks of <see cref="ForwardPhase.QkvProjection"/>.</summary>
    public long QkvProjection;
    /// <summary>Ticks of <see cref="ForwardPhase.KvAppend"/>.</summary>
    public long KvAppend;
    /// <summary>Ticks of <see cref="ForwardPhase.Attention"/>.</summary>
    public long Attention;
    /// <summary>Ticks of <see cref="ForwardPhase.OutputProjection"/>.</summary>
    public long OutputProjection;
    /// <summary>Ticks of <see cref="ForwardPhase.GateUp"/>.</summary>
    public long GateUp;
    /// <summary>Ticks of <see cref="ForwardPhase.Down"/>.</summary>
    public long Down;
    /// <summary>Ticks of <see cref="ForwardPhase.LmHead"/>.</summary>
    public long LmHead;
    /// <summary>Ticks of <see cref="ForwardPhase.Other"/>.</summary>
    public long Other;
    /// <summary>Tokens the forward passes ran.</summary>
    public long Tokens;

    /// <summary>Ticks of every phase together.</summary>
    public readonly long Total => QkvProjection + KvAppend + Attention + OutputProjection + GateUp + Down + LmHead + Other;

    /// <summary>Milliseconds per token of each phase since <paramref name="before"/>, by name (for JSON).</summary>
    public readonly Dictionary<string, double> MillisecondsPerToken(in ForwardTimes before)
    {
        double perTick = 1000.0 / Stopwatch.Frequency / Math.Max(1, Tokens - before.Tokens);
        return new()
        {
            ["qkv_projection"] = (QkvProjection - before.QkvProjection) * perTick,
            ["kv_append"] = (KvAppend - before.KvAppend) * perTick,
            ["attention"] = (Attention - before.Attention) * perTick,
            ["output_projection"] = (OutputProjection - before.OutputProjection) * perTick,
            ["ffn_gate_up"] = (GateUp - before.GateUp) * perTick,
            ["ffn_down"] = (Down - before.Down) * perTick,
            ["lm_head"] = (LmHead - before.LmHead) * perTick,
            ["other"] = (Other - before.Other) * perTick,
        };
    }

    internal void Add(ForwardPhase phase, long ticks)
    {
        switch (phase)
        {
            case ForwardPhase.QkvProjection: QkvProjection += ticks; break;
            case ForwardPhase.KvAppend: KvAppend += ticks; break;
            case ForwardPhase.Attention: Attention += ticks; break;
            case ForwardPhase.OutputProjection: OutputProjection += ticks; break;
            case ForwardPhase.GateUp: GateUp += ticks; break;
            case ForwardPhase.Down: Down += ticks; break;
            case ForwardPhase.LmHead: LmHead += ticks; break;
            default: Other += ticks; break;
        }
    }
}

/// <summary>
/// The clock of one forward pass: each block calls <see cref="Lap"/> with its phase when it finishes, so the
/// architecture files compose blocks without timing code of their own.
/// </summary>
public sealed class ForwardProfile
{
    long clock;

    /// <summary>Sums so far, over every pass this profile timed.</summary>
    public ForwardTimes Times;

    /// <summary>Starts timing a pass.</summary>
    public void Start() => clock = Stopwatch.GetTimestamp();

    /// <summary>Adds the time since the last lap to <paramref name="phase"/>.</summary>
    public void Lap(ForwardPhase phase)
    {
        long now = Stopwatch.GetTimestamp();
        Times.Add(phase, now - clock);
        clock = now;
    }
}
