using VidKV.Cache;
using VidKV.Engine;
using VidKV.Models;
using VidKV.Tensors;

namespace VidKV.Tests;

[CollectionDefinition("Allocation", DisableParallelization = true)]
public class AllocationCollection;

/// <summary>Decode in steady state allocates no managed memory, counted on the calling thread and on every worker thread.</summary>
[Collection("Allocation")]
public class AllocationTests
{
    [Theory]
    [InlineData("tiny-qwen2-random", GgmlType.F16)]
    [InlineData("stories260K", GgmlType.F32)]
    public void DecodingATokenAllocatesNothing(string name, GgmlType cacheType)
    {
        using var model = ModelLoader.Load(TestData.Model(name));
        using var state = model.CreateState(512, cacheType, cacheType);
        var logits = new float[model.Config.VocabSize];
        var sampler = new Sampler(new SamplingOptions { Seed = 1 });
        var history = new List<int>(512) { 1, 2, 3, 4 };
        Generator.Prefill(model, state, history, logits);
        int[] token = [0];
        for (int i = 0; i < 150; i++) Step(); // warm up: per-thread buffers, JIT tiers

        long Allocated() => GC.GetAllocatedBytesForCurrentThread() + WorkerPool.Shared.WorkerAllocatedBytes;
        long before = Allocated();
        for (int i = 0; i < 32; i++) Step();
        long allocated = Allocated() - before;
        Assert.True(allocated == 0, $"decoding 32 tokens allocated {allocated} bytes");

        void Step()
        {
            token[0] = sampler.Sample(logits, history);
            history.Add(token[0]);
            model.Forward(state, token, logits);
        }
    }

    /// <summary>
    /// The same for paged caches under the policies decode runs with: after the warm-up no buffer of the store, the
    /// cache or the policy grows (the window stays inside the capacities the warm-up reached), so nothing is allocated.
    /// </summary>
    [Theory]
    [InlineData("full")]
    [InlineData("freekv:budget=64")]
    [InlineData("quest:budget=64")]
    public void PagedDecodingAllocatesNothing(string spec)
    {
        using var model = ModelLoader.Load(TestData.Model("stories260K"));
        var c = model.Config;
        using var state = model.CreateState(new KvCacheConfig { Default = spec, PageSize = 16 }.CreateCache(c.LayerCount, c.KvHeadCount, c.HeadDim, 512));
        var logits = new float[c.VocabSize];
        Generator.Prefill(model, state, [1, 2, 3, 4], logits);
        int[] token = [0];
        for (int i = 0; i < 150; i++) Step(i);

        long Allocated() => GC.GetAllocatedBytesForCurrentThread() + WorkerPool.Shared.WorkerAllocatedBytes;
        long before = Allocated();
        for (int i = 0; i < 32; i++) Step(i);
        long allocated = Allocated() - before;
        Assert.True(allocated == 0, $"decoding 32 tokens under {spec} allocated {allocated} bytes");

        void Step(int i)
        {
            token[0] = 3 + i % 200;
            model.Forward(state, token, logits);
        }
    }
}
