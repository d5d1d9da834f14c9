namespace VidKV.Engine;

/// <summary>How an <see cref="InferenceEngine"/> fills the rows a step has left after its decode rows with prompts and ingests.</summary>
public enum PrefillScheduling
{
    /// <summary>
    /// Each pending prompt or ingest gets a chunk of up to <see cref="EngineOptions.PrefillChunk"/> rows per step, in
    /// turn from where the last step stopped: no prompt holds up the others, but one longer than a chunk takes a step
    /// per chunk before its first token.
    /// </summary>
    Chunked,
    /// <summary>
    /// Prepacking (Zhao et al. 2024, "Prepacking: A Simple Method for Fast Prefilling and Increased Throughput in Large
    /// Language Models", arXiv:2404.09529): whole prompts (an answer's prompt, a session's next append) are packed into
    /// the step's free rows by first-fit decreasing (<see cref="Prepacking.FirstFitDecreasing"/>) and the step runs the
    /// first bin, so prompts that fit finish their prefill in one step. Each prompt's rows keep their own positions and
    /// attend only to their own sequence (one sequence per prompt: the block-diagonal mask). A prompt too long for the
    /// free rows goes in chunks as under <see cref="Chunked"/>; while there is one, a chunk's rows are kept for it, so
    /// packed prompts cannot starve it.
    /// </summary>
    Prepacked,
}

/// <summary>Prepacking's bin packing (Zhao et al. 2024, arXiv:2404.09529), allocation-free for the engine loop.</summary>
internal static class Prepacking
{
    /// <summary>
    /// First-fit decreasing: takes the items from the largest to the smallest (equal sizes in their given order) and puts
    /// each into the first bin with room for it, opening a new bin when none has. An item larger than
    /// <paramref name="capacity"/> goes into no bin (−1). Returns the number of bins.
    /// </summary>
    /// <param name="sizes">rows of each item, [items]</param>
    /// <param name="capacity">rows of a bin</param>
    /// <param name="bins">the bin of each item, or −1: [items]</param>
    /// <param name="order">the items' indices from the largest to the smallest: [items]</param>
    /// <param name="loads">scratch, the rows in each bin: [items]</param>
    public static int FirstFitDecreasing(ReadOnlySpan<int> sizes, int capacity, Span<int> bins, Span<int> order, Span<int> loads)
    {
        int n = sizes.Length;
        if (bins.Length < n || order.Length < n || loads.Length < n)
            throw new ArgumentException($"bins, order and loads must each hold the {n} items");
        // Insertion sort, stable: n is the number of waiting prompts, and a sort with a comparer would allocate.
        for (int i = 0; i < n; i++)
        {
            int item = i, j = i;
            for (; j > 0 && sizes[order[j - 1]] < sizes[item]; j--) order[j] = order[j - 1];
            order[j] = item;
        }
        int count = 0;
        for (int k = 0; k < n; k++)
        {
            int item = order[k], size = sizes[item];
            bins[item] = -1;
            if (size > capacity) continue;
            int bin = 0;
            while (bin < count && loads[bin] + size > capacity) bin++;
            if (bin == count) loads[count++] = 0;
            loads[bin] += size;
            bins[item] = bin;
        }
        return count;
    }
}
