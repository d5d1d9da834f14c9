using System.Buffers;
using System.Numerics.Tensors;

namespace VidKV.Tensors;

/// <summary>Scaled dot-product attention kernels over a contiguous KV store.</summary>
public static class Attention
{
    /// <summary>
    /// Causal grouped-query attention for a batch of <paramref name="tokenCount"/> queries at positions
    /// <paramref name="startPosition"/>.. : query t sees keys 0..startPosition+t.
    /// </summary>
    /// <param name="queries">[tokenCount, headCount, headDim]</param>
    /// <param name="keys">[positions, kvHeadCount, headDim], keys already rotated</param>
    /// <param name="values">[positions, kvHeadCount, headDim]</param>
    /// <param name="destination">[tokenCount, headCount, headDim]</param>
    public static unsafe void Causal(ReadOnlySpan<float> queries, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int tokenCount, int startPosition, int headCount, int kvHeadCount, int headDim, float scale, Span<float> destination)
    {
        int group = headCount / kvHeadCount;
        int kvRow = kvHeadCount * headDim, qRow = headCount * headDim;
        int positions = startPosition + tokenCount;
        if (keys.Length < positions * kvRow || values.Length < positions * kvRow) throw new ArgumentException("KV store shorter than the attended positions");
        fixed (float* pq = queries, pk = keys, pv = values, po = destination)
        {
            float* q = pq, k = pk, v = pv, o = po;
            Parallel.For(0, tokenCount * headCount, () => ArrayPool<float>.Shared.Rent(positions), (item, _, scores) =>
            {
                int t = item / headCount, h = item % headCount, kvh = h / group;
                int visible = startPosition + t + 1;
                var query = new ReadOnlySpan<float>(q + (long)t * qRow + h * headDim, headDim);
                Span<float> s = scores.AsSpan(0, visible);
                for (int j = 0; j < visible; j++)
                    s[j] = TensorPrimitives.Dot(query, new ReadOnlySpan<float>(k + (long)j * kvRow + kvh * headDim, headDim)) * scale;
                Kernels.Softmax(s);
                var output = new Span<float>(o + (long)t * qRow + h * headDim, headDim);
                output.Clear();
                for (int j = 0; j < visible; j++)
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(v + (long)j * kvRow + kvh * headDim, headDim), s[j], output, output);
                return scores;
            }, scores => ArrayPool<float>.Shared.Return(scores));
        }
    }
}
