using TorchSharp;
using VidKV.Cache;
using VidKV.Models;
using VidKV.Tensors;
using VidKV.Train;
using static TorchSharp.torch;

namespace VidKV.Train.Tests;

/// <summary>The trainer's model against VidKV's engine, its training step, and the libtorch load fix.</summary>
public class TrainerTests
{
    static TrainerTests() => LibTorchLoadFix.Apply();

    /// <summary>Small sizes of every part (odd token counts; GQA; two ViT blocks; a 4-token frame).</summary>
    static readonly TinyVlmConfig Small = new()
    {
        ImageSize = 32, PatchSize = 8, VisionWidth = 32, VisionBlocks = 2, VisionHeads = 2, VisionFeedForward = 80, MergeFactor = 2,
        Layers = 2, Embedding = 64, Heads = 4, KvHeads = 2, FeedForward = 96, Vocab = 400,
    };

    sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("vidkv-train-").FullName;
        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    /// <summary>
    /// The exported pair, loaded by VidKV, gives the torch model's logits at every row of a prompt of tokens, a frame's
    /// projector rows and more tokens: the tower, pixel shuffle, projector, RoPE, GQA and SwiGLU agree. Tolerance 2e-3
    /// of the logits' scale: VidKV's GELU reads ggml's fp16 table (inputs rounded to fp16) where torch computes tanh GELU
    /// in f32.
    /// </summary>
    [Theory]
    [InlineData(32, 2)]
    [InlineData(48, 3)] // a pixel shuffle of 3 × 3 patches (a 96² tower of 8-pixel patches merges so)
    public void ExportedPairGivesTheTorchModelsLogits(int imageSize, int merge)
    {
        using var dir = new TempDir();
        var config = Small with { ImageSize = imageSize, MergeFactor = merge };
        using var model = new TinyVlm(config, seed: 3);
        var (textPath, projectorPath) = ModelExport.Write(dir.Path, model, "train-test", RandomVisionShape.SmolVlmVocabulary);

        var rng = new Random(5);
        int size = config.ImageSize, frameRows = config.TokensPerFrame, d = config.Embedding, vocab = config.Vocab;
        var pixels = new float[3 * size * size];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (float)(rng.NextDouble() * 2 - 1);
        int[] before = [.. Enumerable.Range(0, 7).Select(_ => rng.Next(256))], after = [.. Enumerable.Range(0, 6).Select(_ => rng.Next(256))];
        int rows = before.Length + frameRows + after.Length;

        float[] want;
        using (no_grad())
        {
            var frame = model.EncodeFrames(tensor(pixels).view(1, 3, size, size))[0];
            var inputs = cat([model.EmbedTokens(tensor(before, int64)), frame, model.EmbedTokens(tensor(after, int64))], 0).unsqueeze(0);
            var logits = model.Decode(inputs, arange(rows, dtype: float32).unsqueeze(0));
            want = logits.contiguous().data<float>().ToArray();
        }

        using var text = ModelLoader.Load(textPath);
        using var vision = VisionModel.Load(projectorPath);
        Assert.Equal(frameRows, vision.TokensPerEntry);
        var buffers = new Activations();
        var frameOut = new float[frameRows * d];
        vision.Encode(pixels, frameOut, buffers);
        var batch = text.CreateBatch();
        foreach (int t in before) batch.AddToken(t, logits: true);
        for (int r = 0; r < frameRows; r++) batch.AddEmbedding(frameOut.AsSpan(r * d, d), logits: true);
        foreach (int t in after) batch.AddToken(t, logits: true);
        using var cache = new PagedKvCache(new PagedKvStore(text.PagedOptions(16, GgmlType.F32)), new KvPolicyMap(text.Config.LayerCount, text.Config.KvHeadCount, new FullPolicy()));
        var got = new float[rows * vocab];
        Assert.Equal(DecodeStatus.Ok, text.Decode(batch, [cache], new Activations(), got));

        float scale = want.Max(MathF.Abs);
        int worst = Enumerable.Range(0, want.Length).MaxBy(i => MathF.Abs(want[i] - got[i]));
        Assert.True(MathF.Abs(want[worst] - got[worst]) <= 2e-3f * scale,
            $"row {worst / vocab} logit {worst % vocab}: torch {want[worst]}, VidKV {got[worst]} (scale {scale})");
    }

    /// <summary>Every exported tensor is a trained parameter and the other way round (a block left unregistered would not learn).</summary>
    [Fact]
    public void EveryExportedTensorIsAParameter()
    {
        using var model = new TinyVlm(Small);
        Assert.Equal(model.Export().Values.Sum(v => (long)v.Length), model.parameters().Sum(p => p.numel()));
        Assert.Equal(model.Export().Count, model.parameters().Count());
    }

    /// <summary>Training goes on after an evaluation between steps (a checkpoint's), and the evaluation scores what it asked.</summary>
    [Fact]
    public void TrainingGoesOnAfterAnEvaluation()
    {
        var config = Small with { Vocab = WorldVocabulary.Size };
        using var model = new TinyVlm(config, seed: 2);
        var examples = new WorldExamples(config, WorldVocabulary.CreateTokenizer(), new ExampleOptions { MaxFrames = 4, RenderSize = 32 });
        var trainer = new Trainer(model, examples, new TrainOptions { Steps = 6, CheckpointEvery = 2, WarmupSteps = 1 });
        var results = new List<EvalResult>();
        string saved = Path.GetTempFileName();
        try
        {
            trainer.Run(TextWriter.Null, checkpoint: _ =>
            {
                model.save(saved);
                results.Add(trainer.Evaluate([VidKV.World.WorldStream.HeldOutSeeds]));
            });
        }
        finally
        {
            File.Delete(saved);
        }
        Assert.Equal(3, results.Count);
        Assert.All(results, r => Assert.True(r.Questions >= 1 && r.QuietFrames + r.EventFrames >= 2));
    }

    /// <summary>
    /// Training the eyes alone (<see cref="Trainer.PretrainVision"/>): the probe's loss falls, the tower and the
    /// projector change, and the decoder's weights (token embeddings, blocks, output) stay exactly as they were.
    /// </summary>
    [Fact]
    public void PretrainingTheEyesTeachesTheProbeAndLeavesTheDecoder()
    {
        torch.manual_seed(5);
        var config = Small with { Vocab = WorldVocabulary.Size };
        using var model = new TinyVlm(config, seed: 3);
        var examples = new WorldExamples(config, WorldVocabulary.CreateTokenizer(), new ExampleOptions { RenderSize = 32 });
        var trainer = new Trainer(model, examples, new TrainOptions { LearningRate = 3e-3, WarmupSteps = 1 });
        static bool Vision(string name) => !name.StartsWith("blk_", StringComparison.Ordinal) && name is not ("tokenEmbedding" or "outputNorm" or "output");
        var before = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        Assert.Contains(before.Keys, Vision);
        Assert.Contains(before.Keys, name => !Vision(name));
        var (first, last) = trainer.PretrainVision(60, 8, TextWriter.Null);
        Assert.True(last < 0.9 * first, $"probe loss {first:F3} → {last:F3} after 60 steps"); // 9.0 → 7.7 when written
        foreach (var (name, parameter) in model.named_parameters())
        {
            bool same = parameter.detach().equal(before[name]).all().item<bool>();
            if (Vision(name)) Assert.False(same, $"{name} did not change");
            else Assert.True(same, $"{name} changed");
        }
    }

    /// <summary>
    /// A small model on the world's vocabulary and a trainer for it: 80 steps at 3e-3 with one warm-up step, no perception
    /// probe and no checkpoints, beside what <paramref name="options"/> sets (its weights). The caller disposes the model.
    /// </summary>
    static (TinyVlm Model, WorldExamples Examples, Trainer Trainer) WorldTrainer(long modelSeed, ExampleOptions clips, TrainOptions options)
    {
        var config = Small with { Vocab = WorldVocabulary.Size };
        var model = new TinyVlm(config, modelSeed);
        var examples = new WorldExamples(config, WorldVocabulary.CreateTokenizer(), clips);
        return (model, examples, new Trainer(model, examples, options with { Steps = 80, LearningRate = 3e-3, WarmupSteps = 1, ProbeWeight = 0, CheckpointEvery = 0 }));
    }

    /// <summary>
    /// The change probe (<see cref="TrainOptions.ChangeWeight"/>) learns: after 80 steps its loss on held-out clips is
    /// well below its start. And the decoder's tap gives the rows after its first layers without changing the logits
    /// (none: the inputs themselves).
    /// </summary>
    [Fact]
    public void TheChangeProbeLearnsFromTheDecodersMiddleRows()
    {
        torch.manual_seed(13);
        var (model, examples, trainer) = WorldTrainer(modelSeed: 4, new ExampleOptions { MinFrames = 3, MaxFrames = 6, QuestionsPerClip = 1, RenderSize = 32 }, new TrainOptions { ChangeWeight = 5 });
        using var disposeModel = model;
        var config = model.Config;
        var heldOut = Enumerable.Range(0, 6).Select(i => examples.Make(VidKV.World.WorldStream.HeldOutSeeds + (ulong)i)).ToArray();
        double Loss() => heldOut.Average(trainer.ChangeLoss);
        double first = Loss();
        trainer.Run(TextWriter.Null);
        double last = Loss();
        Assert.True(last < 0.8 * first, $"change probe loss {first:F3} → {last:F3} after 80 steps");

        using var scope = NewDisposeScope();
        var inputs = randn(1, 7, config.Embedding);
        var positions = arange(7, dtype: float32).unsqueeze(0);
        using (no_grad())
        {
            var plain = model.Decode(inputs, positions);
            var tapped = model.Decode(inputs, positions, null, 1, out var middle);
            Assert.True(plain.equal(tapped).all().item<bool>());
            Assert.False(middle.equal(inputs).all().item<bool>());
            model.Decode(inputs, positions, null, 0, out var none);
            Assert.True(none.equal(inputs).all().item<bool>());
        }
    }

    /// <summary>
    /// The pointer loss (<see cref="TrainOptions.PointerWeight"/>) teaches its head where to look: after 80 steps the
    /// attention it gives the evidence rows of held-out questions is well above its start; and its logits are a head's:
    /// moving every position by one constant (RoPE is relative) leaves them, moving one row's position changes that row's.
    /// </summary>
    [Fact]
    public void ThePointerLossTeachesAHeadWhereTheAnswerIs()
    {
        torch.manual_seed(17);
        var (model, _, trainer) = WorldTrainer(modelSeed: 6, new ExampleOptions { MinFrames = 2, MaxFrames = 5, QuestionsPerClip = 6, RenderSize = 32 }, new TrainOptions { PointerWeight = 5 });
        using var disposeModel = model;
        var config = model.Config;
        var heldOut = Enumerable.Range(0, 6).Select(i => VidKV.World.WorldStream.HeldOutSeeds + (ulong)i).ToArray();
        double first = trainer.Evaluate(heldOut).Pointer;
        trainer.Run(TextWriter.Null);
        double last = trainer.Evaluate(heldOut).Pointer;
        Assert.True(last > 1.5 * first, $"attention on the evidence {first:P1} → {last:P1} after 80 steps");

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var input = randn(9, config.Embedding);
        var positions = arange(9, dtype: float32) * 3;
        long[] queries = [4, 8];
        var logits = model.AttentionLogits(1, 3, input, positions, queries);
        Assert.Equal(new long[] { 2, 9 }, logits.shape);
        Assert.True(logits.allclose(model.AttentionLogits(1, 3, input, positions + 1000, queries), rtol: 1e-3, atol: 1e-3));
        var moved = positions + tensor(new float[] { 0, 0, 5, 0, 0, 0, 0, 0, 0 });
        var changed = (model.AttentionLogits(1, 3, input, moved, queries) - logits).abs().amax([0]).data<float>().ToArray();
        for (int row = 0; row < changed.Length; row++)
            if (row == 2) Assert.True(changed[row] > 1e-4, "the moved row's logits did not change");
            else if (!queries.Contains(row)) Assert.True(changed[row] < 1e-5, $"row {row}'s logits changed by {changed[row]}");
    }

    /// <summary>
    /// <see cref="TrainOptions.TowerRate"/>: the tower and the rest split every parameter between them; at 0 a run leaves
    /// the tower bit-identical and moves everything else; at a tenth the tower moves, less than at the full rate.
    /// </summary>
    [Fact]
    public void TheTowerRateScalesOnlyTheTower()
    {
        var config = Small with { Vocab = WorldVocabulary.Size };
        var examples = new WorldExamples(config, WorldVocabulary.CreateTokenizer(), new ExampleOptions { MaxFrames = 3, RenderSize = 32 });
        double TowerMove(double rate, bool checkRest)
        {
            torch.manual_seed(19);
            using var model = new TinyVlm(config, seed: 8);
            var tower = model.TowerParameters().ToList();
            var rest = model.LanguageParameters().ToList();
            Assert.Equal(model.parameters().Count(), tower.Count + rest.Count);
            var before = tower.Concat(rest).Select(p => p.detach().clone()).ToList();
            new Trainer(model, examples, new TrainOptions { Steps = 4, WarmupSteps = 1, TowerRate = rate, CheckpointEvery = 0 }).Run(TextWriter.Null);
            var after = tower.Concat(rest).ToList();
            if (checkRest)
                for (int i = tower.Count; i < after.Count; i++) Assert.False(after[i].detach().equal(before[i]).all().item<bool>(), "a language parameter did not move");
            return Enumerable.Range(0, tower.Count).Sum(i => (after[i].detach() - before[i]).abs().sum().item<float>());
        }
        Assert.Equal(0, TowerMove(0, checkRest: true));
        double tenth = TowerMove(0.1, checkRest: false), full = TowerMove(1, checkRest: false);
        Assert.True(tenth > 0 && tenth < 0.5 * full, $"tower moved {tenth} at a tenth of the rate, {full} at the full rate");
    }

    /// <summary>A few AdamW steps on one fixed batch (a frame between tokens, loss on the tokens after it) at least halve the loss.</summary>
    [Fact]
    public void LossFallsOnAFixedBatch()
    {
        torch.manual_seed(7);
        using var model = new TinyVlm(Small, seed: 11);
        var rng = new Random(9);
        int size = Small.ImageSize, frameRows = Small.TokensPerFrame;
        var pixels = rand(2, 3, size, size) * 2 - 1;
        long[] prompt = [.. Enumerable.Range(0, 5).Select(_ => (long)rng.Next(Small.Vocab))];
        long[][] answers = [[.. Enumerable.Range(0, 9).Select(_ => (long)rng.Next(Small.Vocab))], [.. Enumerable.Range(0, 9).Select(_ => (long)rng.Next(Small.Vocab))]];
        var optimizer = optim.AdamW(model.parameters(), lr: 3e-3);
        double Step(bool train)
        {
            using var scope = NewDisposeScope();
            var frames = model.EncodeFrames(pixels);
            var loss = zeros(1);
            for (int s = 0; s < 2; s++)
            {
                var inputs = cat([model.EmbedTokens(tensor(prompt)), frames[s], model.EmbedTokens(tensor(answers[s]))], 0).unsqueeze(0);
                int rows = (int)inputs.shape[1];
                var logits = model.Decode(inputs, arange(rows, dtype: float32).unsqueeze(0))[0];
                int first = prompt.Length + frameRows; // logits at row r predict row r + 1
                loss = loss + nn.functional.cross_entropy(logits.narrow(0, first - 1, answers[s].Length), tensor(answers[s]));
            }
            if (train)
            {
                optimizer.zero_grad();
                loss.backward();
            }
            return loss.item<float>();
        }
        double start = Step(train: false);
        for (int i = 0; i < 40; i++)
        {
            Step(train: true);
            optimizer.step(); // outside Step's scope, which would free the optimizer's state (see Trainer.Run)
        }
        double end = Step(train: false);
        Assert.True(end < start / 2, $"loss {start:F3} → {end:F3} after 40 steps");
    }

    /// <summary>
    /// The load fix flips exactly one byte of TorchSharp's native library — the weak flag of its GLIBCXX_3.4.32 version
    /// need — once: a second pass finds it done; a version the library does not need, or a file that is not ELF, is refused.
    /// </summary>
    [Fact]
    public void LoadFixMarksTheVersionNeedWeakOnce()
    {
        string path = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        var strict = File.ReadAllBytes(path); // patched at start-up on a system without GLIBCXX_3.4.32, else as shipped
        LibTorchLoadFix.SetVersionNeedWeak(strict, "GLIBCXX_3.4.32", weak: false);
        var patched = (byte[])strict.Clone();
        Assert.True(LibTorchLoadFix.SetVersionNeedWeak(patched, "GLIBCXX_3.4.32", weak: true));
        Assert.False(LibTorchLoadFix.SetVersionNeedWeak(patched, "GLIBCXX_3.4.32", weak: true));
        Assert.Equal(1, Enumerable.Range(0, strict.Length).Count(i => strict[i] != patched[i]));
        Assert.False(LibTorchLoadFix.SetVersionNeedWeak(patched, "GLIBCXX_9.9.99", weak: true));
        Assert.Throws<InvalidDataException>(() => LibTorchLoadFix.SetVersionNeedWeak(new byte[100], "GLIBCXX_3.4.32", weak: true));
    }
}
