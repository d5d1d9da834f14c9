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
}
