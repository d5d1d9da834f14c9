using System.Diagnostics;
using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VidKV.Train;

/// <summary>How a training run goes.</summary>
public sealed record TrainOptions
{
    /// <summary>Optimizer steps (one example each).</summary>
    public int Steps { get; init; } = 4000;
    /// <summary>
    /// Peak learning rate (AdamW), reached after <see cref="WarmupSteps"/>, then cosine down to a tenth. At 2e-3 the tower
    /// collapsed: every frame's rows became one large constant vector (row norm 161 against 16 at the start, two
    /// different frames 0.5 % apart against 40 %) and answers stayed at the priors (17.6 % on one-frame clips after 1,500
    /// steps); at 5e-4 the same run reached 32.8 % with its loss still falling.
    /// </summary>
    public double LearningRate { get; init; } = 5e-4;
    /// <summary>Steps of linear warm-up.</summary>
    public int WarmupSteps { get; init; } = 100;
    /// <summary>AdamW weight decay.</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>Gradient norm clip.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Seed of the weights and of the training examples (example k of the run is world seed <c>Seed · 10⁹ + k</c>, k the step).</summary>
    public long Seed { get; init; } = 1;
    /// <summary>Threads libtorch uses (0: its default).</summary>
    public int Threads { get; init; }
    /// <summary>
    /// Weight of the perception probe's loss beside the language loss (0: no probe). The probe is a linear head, used in
    /// training only, that reads each frame row and names the colour, shape, size and 3×3 region of the object centred in
    /// its cell and where in the cell: dense supervision of the tower that the answers alone give slowly (after 10,000 steps
    /// without it, "where" questions were right 15 % of the time and object lists never).
    /// </summary>
    public double ProbeWeight { get; init; } = 0.5;
    /// <summary>
    /// Weight of each frame's proactive decision (its closing row: silence, or the narration's first token) in the
    /// language loss, against 1 for a narration's or a stream's other targets. One row a frame against a narration's
    /// several: unweighted, a run whose tower learnt more kept silent on only 56 % of quiet frames.
    /// </summary>
    public double DecisionWeight { get; init; } = 1;
    /// <summary>
    /// Weight of the change probe's loss (0: no probe). The change probe is a linear head, used in training only, on the
    /// decoder's rows after its first half of layers: at each frame row it names the event whose object is in the row's
    /// cell (<see cref="ChangeTargets"/>) and whether that cell's object moved since the frame before; at each frame's
    /// closing row, the frame's event. Dense supervision of the comparison of a frame with the one before, which the
    /// proactive decision needs and one token a frame taught too weakly (every run's decision stayed at the base rate).
    /// </summary>
    public double ChangeWeight { get; init; }
    /// <summary>
    /// Weight of the pointer loss (0: none): at each row of a question's branch that predicts an answer token, head 0 of the
    /// decoder's middle layer is taught to look at the frame rows that hold the answer — the cells of the objects the
    /// question is about in its evidence frames (<see cref="WorldExample.Evidence"/>): −log of the attention it gives
    /// them together (what else it points from: <see cref="PointerTargets"/>). Supervised attention for binding a
    /// question to its rows, which the answers alone teach slowly: a run whose probe read 98 % of objects' colours and
    /// regions from the rows still answered "what colour is the …" 64 % and "where is the …" 58 % right, mostly naming
    /// another object's colour or the wrong row of the grid; with this loss at weight 1 (run 9c), 99 % and 100 %.
    /// </summary>
    public double PointerWeight { get; init; }
    /// <summary>What the pointer loss points from (<see cref="PointerTargets"/>).</summary>
    public PointerTargets PointerTargets { get; init; } = PointerTargets.All;
    /// <summary>
    /// The tower's learning rate as a share of the run's (1: the same; 0: frozen) in the language run. Eyes trained first
    /// (<see cref="Trainer.PretrainVision"/>) lost much of what they read to the young decoder's gradients at the full
    /// rate (the probe's shape accuracy fell from 93 % to 50–74 % in the first 2,500 steps).
    /// </summary>
    public double TowerRate { get; init; } = 1;
    /// <summary>Weight of an answer's targets (a question branch's rows) in the language loss.</summary>
    public double AnswerWeight { get; init; } = 1;
    /// <summary>Write a checkpoint every this many steps (0: only at the end).</summary>
    public int CheckpointEvery { get; init; } = 500;
}

/// <summary>What the pointer loss (<see cref="TrainOptions.PointerWeight"/>) points from.</summary>
public enum PointerTargets
{
    /// <summary>Answer rows only, each at every cell of the question's objects (the built-in model's recipe).</summary>
    Answers,
    /// <summary>
    /// Answer rows (in "what is on the screen" each object's words at that object), a frame's decision and narration at
    /// the event's object, and a second head from a "when" answer at its frame's time stamp.
    /// </summary>
    All,
}

/// <summary>Answer and narration scores of a model on examples (<see cref="Trainer.Evaluate"/>).</summary>
public sealed record EvalResult(int Questions, int Correct, int EventFrames, int Narrated, int Comments, int QuietFrames, int QuietKept, double Loss)
{
    /// <summary>Questions asked and answered right, per template.</summary>
    public IReadOnlyDictionary<VidKV.World.QuestionKind, (int Correct, int Asked)> ByKind { get; init; } = new Dictionary<VidKV.World.QuestionKind, (int, int)>();
    /// <summary>The perception probe's accuracy on cells that hold an object's centre: colour, shape, size, region (what the tower's rows tell a linear head).</summary>
    public (double Colour, double Shape, double Size, double Region) Probe { get; init; }
    /// <summary>The change probe's accuracy on frames' event classes: on frames with an event, and on frames without.</summary>
    public (double Events, double Quiet) Change { get; init; }
    /// <summary>The attention the pointer heads of the decoder's middle layer give the rows of a question's evidence from its answer rows (geometric mean over rows and clips, the heads' product where both have targets: exp of −the pointer loss).</summary>
    public double Pointer { get; init; }

    /// <summary>Share of questions whose whole answer (and its end) the model gives greedily.</summary>
    public double Accuracy => Questions == 0 ? 0 : (double)Correct / Questions;
    /// <summary>Narration F1 on event frames: a hit is an event frame where the model speaks and says the whole narration and its end.</summary>
    public double NarrationF1 => Narrated == 0 ? 0 : 2.0 * Narrated / (EventFrames + Comments);
    /// <summary>Share of event-free frames where the model stays silent.</summary>
    public double Silence => QuietFrames == 0 ? 1 : (double)QuietKept / QuietFrames;

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"answers {Correct}/{Questions} ({Accuracy:P1}; {string.Join(", ", ByKind.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value.Correct}/{k.Value.Asked}"))}), narration F1 {NarrationF1:F3}, silent on {QuietKept}/{QuietFrames} quiet frames ({Silence:P1}), loss {Loss:F4}; probe on objects' cells: colour {Probe.Colour:P0}, shape {Probe.Shape:P0}, size {Probe.Size:P0}, region {Probe.Region:P0}; change probe on frames: events {Change.Events:P0}, quiet {Change.Quiet:P0}; pointer heads' attention on the evidence {Pointer:P0}");
}

/// <summary>
/// Trains a <see cref="TinyVlm"/> on <see cref="WorldExamples"/>: one example per step (its questions share its stream
/// through the branch mask), AdamW, warm-up then cosine decay, gradient clipping; progress with loss and ETA.
/// </summary>
public sealed class Trainer(TinyVlm model, WorldExamples examples, TrainOptions options)
{
    readonly PerceptionProbe probe = new(model.Config.Embedding);
    readonly ChangeProbe change = new(model.Config.Embedding);

    /// <summary>Decoder layers before the rows the change probe reads, which are the input of the layer whose head the pointer loss teaches (half of them).</summary>
    int TapLayers => Math.Min(model.Config.Layers - 1, Math.Max(1, model.Config.Layers / 2));

    /// <summary>Writes the model to <paramref name="path"/> and the probes beside it (<c>.probe.bin</c>, <c>.change.bin</c>), as a checkpoint.</summary>
    public void Save(string path)
    {
        model.save(path);
        probe.save(ProbePath(path));
        change.save(ChangePath(path));
    }

    /// <summary>Reads a checkpoint written by <see cref="Save"/> (each probe only when it is there: a checkpoint without one leaves it new).</summary>
    public void Load(string path)
    {
        model.load(path);
        if (File.Exists(ProbePath(path))) probe.load(ProbePath(path));
        if (File.Exists(ChangePath(path))) change.load(ChangePath(path));
    }

    static string ProbePath(string checkpoint) => Path.ChangeExtension(checkpoint, ".probe.bin");
    static string ChangePath(string checkpoint) => Path.ChangeExtension(checkpoint, ".change.bin");

    /// <summary>p(silence) at or above which VidKV's proactive mode stays silent (ProactiveOptions.Threshold's default).</summary>
    public const float SilenceThreshold = 0.725f;

    /// <summary>Runs the steps from <paramref name="firstStep"/>, reporting to <paramref name="log"/>; <paramref name="checkpoint"/> is called with the step every <see cref="TrainOptions.CheckpointEvery"/>.</summary>
    public void Run(TextWriter log, int firstStep = 0, Action<int>? checkpoint = null, CancellationToken cancellation = default)
    {
        if (options.Threads > 0) torch.set_num_threads(options.Threads);
        model.train();
        var rest = model.LanguageParameters().Concat(options.ProbeWeight > 0 ? probe.parameters() : []).Concat(options.ChangeWeight > 0 ? change.parameters() : []).ToList();
        var tower = options.TowerRate > 0 ? model.TowerParameters().ToList() : [];
        foreach (var p in model.TowerParameters()) p.requires_grad = options.TowerRate > 0;
        var parameters = rest.Concat(tower).ToList();
        // Two groups: the rest at the run's rate, the tower at TowerRate of it.
        double[] rates = tower.Count > 0 ? [1, options.TowerRate] : [1];
        using var optimizer = optim.AdamW(
            tower.Count > 0 ? [new AdamW.ParamGroup(rest, lr: options.LearningRate, weight_decay: options.WeightDecay), new AdamW.ParamGroup(tower, lr: options.LearningRate * options.TowerRate, weight_decay: options.WeightDecay)]
                            : [new AdamW.ParamGroup(rest, lr: options.LearningRate, weight_decay: options.WeightDecay)],
            lr: options.LearningRate, weight_decay: options.WeightDecay);
        var clock = Stopwatch.StartNew();
        double average = double.NaN;
        int done = 0;
        for (int step = firstStep; step < options.Steps && !cancellation.IsCancellationRequested; step++)
        {
            int g = 0;
            foreach (var group in optimizer.ParamGroups) group.LearningRate = LearningRate(step) * rates[g++];
            var example = examples.Make(ExampleSeed(options.Seed, step));
            float value = Step(optimizer, parameters, () => Forward(example, options.ProbeWeight, options.DecisionWeight, options.AnswerWeight, options.ChangeWeight, options.PointerWeight).Loss);
            average = double.IsNaN(average) ? value : 0.98 * average + 0.02 * value;
            done++;
            if (step % 20 == 0 || step == options.Steps - 1)
            {
                double perStep = clock.Elapsed.TotalSeconds / done;
                var eta = TimeSpan.FromSeconds(perStep * (options.Steps - step - 1));
                log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"step {step + 1}/{options.Steps}  loss {average:F4}  lr {LearningRate(step):E2}  {perStep:F2} s/step  elapsed {clock.Elapsed:hh\\:mm\\:ss}  ETA {eta:hh\\:mm\\:ss}"));
            }
            if (checkpoint != null && options.CheckpointEvery > 0 && (step + 1) % options.CheckpointEvery == 0) checkpoint(step + 1);
        }
    }

    /// <summary>
    /// Trains the eyes alone before the language model (the staged recipe of LLaVA and SmolVLM, whose towers come
    /// pretrained): the tower, the projector and the perception probe on <paramref name="framesPerStep"/> frames a step
    /// (<see cref="WorldExamples.Frames"/>), the probe's loss only, AdamW at the run's peak rate with its warm-up and
    /// cosine over <paramref name="steps"/>. The decoder is untouched (it gets no gradient). Reports the probe's accuracy
    /// on held-out frames at the end, and returns the probe's loss at the first step and over the last ten.
    /// </summary>
    public (double First, double Last) PretrainVision(int steps, int framesPerStep, TextWriter log)
    {
        if (options.Threads > 0) torch.set_num_threads(options.Threads);
        model.train();
        var parameters = model.parameters().Concat(probe.parameters()).ToList();
        using var optimizer = optim.AdamW(parameters, lr: options.LearningRate, weight_decay: options.WeightDecay);
        var clock = Stopwatch.StartNew();
        double average = double.NaN, first = double.NaN;
        var last = new Queue<double>();
        int side = model.Config.ImageSize;
        for (int step = 0; step < steps; step++)
        {
            foreach (var group in optimizer.ParamGroups) group.LearningRate = Schedule(step, steps);
            // Worlds the language run never draws (its k-th is Seed · 10⁹ + k; FitProbe's start 5 · 10⁸ later).
            var (pixels, cells) = examples.Frames(ExampleSeed(options.Seed, step) + 700_000_000UL, framesPerStep);
            float value = Step(optimizer, parameters, () => probe.Loss(model.EncodeFrames(tensor(pixels).view(framesPerStep, 3, side, side)).view(-1, model.Config.Embedding), cells));
            average = double.IsNaN(average) ? value : 0.98 * average + 0.02 * value;
            if (step == 0) first = value;
            last.Enqueue(value);
            if (last.Count > 10) last.Dequeue();
            if (step % 50 == 0 || step == steps - 1)
            {
                var eta = TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / (step + 1) * (steps - step - 1));
                log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"vision step {step + 1}/{steps}  probe loss {average:F4}  elapsed {clock.Elapsed:hh\\:mm\\:ss}  ETA {eta:hh\\:mm\\:ss}"));
            }
        }
        var (colour, shape, size, region) = ProbeAccuracy(Enumerable.Range(0, 8).Select(i => VidKV.World.WorldStream.HeldOutSeeds + 1_000_000UL + (ulong)i), framesPerStep);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"vision pretrained: probe on held-out objects' cells: colour {colour:P1}, shape {shape:P1}, size {size:P1}, region {region:P1}"));
        return (first, last.Count == 0 ? double.NaN : last.Average());
    }

    /// <summary>The probe's accuracy on the cells that hold an object's centre, over <paramref name="framesEach"/> frames of each world of <paramref name="seeds"/>.</summary>
    public (double Colour, double Shape, double Size, double Region) ProbeAccuracy(IEnumerable<ulong> seeds, int framesEach)
    {
        model.eval();
        var tally = new ProbeTally();
        int side = model.Config.ImageSize;
        using (no_grad())
            foreach (ulong seed in seeds)
            {
                using var scope = NewDisposeScope();
                var (pixels, targets) = examples.Frames(seed, framesEach);
                tally.Add(probe.Predict(model.EncodeFrames(tensor(pixels).view(framesEach, 3, side, side)).view(-1, model.Config.Embedding)), targets);
            }
        model.train();
        return tally.Accuracy;
    }

    /// <summary>The probe's right answers on the cells that hold an object's centre (empty cells are not counted).</summary>
    sealed class ProbeTally
    {
        long cells, colour, shape, size, region;

        public void Add((long[] Colour, long[] Shape, long[] Size, long[] Region) predicted, CellTargets targets)
        {
            for (int cell = 0; cell < predicted.Colour.Length; cell++)
            {
                if (targets.Size[cell] == 0) continue;
                cells++;
                if (predicted.Colour[cell] == targets.Colour[cell]) colour++;
                if (predicted.Shape[cell] == targets.Shape[cell]) shape++;
                if (predicted.Size[cell] == targets.Size[cell]) size++;
                if (predicted.Region[cell] == targets.Region[cell]) region++;
            }
        }

        public (double Colour, double Shape, double Size, double Region) Accuracy =>
            cells == 0 ? default : ((double)colour / cells, (double)shape / cells, (double)size / cells, (double)region / cells);
    }

    /// <summary>
    /// Fits the perception probe alone on the model's frame rows, the model frozen, for <paramref name="steps"/> examples
    /// (AdamW at 1e-2): what a linear head can read from the tower as it is, whatever the probe it was trained with.
    /// </summary>
    public void FitProbe(int steps, TextWriter log)
    {
        if (options.Threads > 0) torch.set_num_threads(options.Threads);
        model.eval();
        using var optimizer = optim.AdamW(probe.parameters(), lr: 1e-2, weight_decay: 0);
        double average = double.NaN;
        for (int step = 0; step < steps; step++)
        {
            // Clips the training run never drew (its k-th is Seed · 10⁹ + k).
            var example = examples.Make(ExampleSeed(options.Seed, step) + 500_000_000UL);
            float value = Step(optimizer, clipped: null, () =>
            {
                Tensor rows;
                using (no_grad()) rows = model.EncodeFrames(tensor(example.Pixels).view(example.Frames, 3, model.Config.ImageSize, model.Config.ImageSize)).view(-1, model.Config.Embedding);
                return probe.Loss(rows, example.Cells);
            });
            average = double.IsNaN(average) ? value : 0.98 * average + 0.02 * value;
            if (step % 100 == 0 || step == steps - 1) log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"probe step {step + 1}/{steps}  loss {average:F4}"));
        }
        model.train();
    }

    /// <summary>
    /// One optimizer step on <paramref name="loss"/>'s value: no collection meanwhile (<see cref="NoCollection"/>), the
    /// graph freed before the update — which runs outside the scope, since AdamW keeps the moments it makes on its first
    /// step across steps — and the gradients of <paramref name="clipped"/> clipped to the run's norm first (null: none).
    /// Returns the loss.
    /// </summary>
    float Step(optim.Optimizer optimizer, IEnumerable<Parameter>? clipped, Func<Tensor> loss)
    {
        using (NoCollection())
        {
            float value;
            using (NewDisposeScope())
            {
                var l = loss();
                optimizer.zero_grad();
                l.backward();
                value = l.item<float>();
            }
            if (clipped != null) nn.utils.clip_grad_norm_(clipped, options.ClipNorm);
            optimizer.step();
            return value;
        }
    }

    /// <summary>
    /// No garbage collection until disposed (for one step). TorchSharp turns numbers into native scalars behind its
    /// operators (<c>x.pow(2)</c>, <c>t + u</c>'s alpha, AdamW's arithmetic) and lets go of the wrapper before the native
    /// call that reads it returns, so a collection during that call can free the scalar under it: runs here died every
    /// 20–600 steps inside libtorch ("Unknown scalar type", Scalar.h asserts) until steps ran with no collection in them.
    /// Between steps the garbage goes (nothing native is running then).
    /// </summary>
    static IDisposable NoCollection()
    {
        const long budget = 192L << 20; // a step allocates a few MB of managed memory (wrappers, the mask, the frames)
        bool started = false;
        try { started = GC.TryStartNoGCRegion(budget); }
        catch (InvalidOperationException) { } // already in one (another thread's: the region is process-wide)
        catch (ArgumentOutOfRangeException) { } // a runtime whose limit is lower: go on without
        return new EndNoCollection(started);
    }

    sealed class EndNoCollection(bool started) : IDisposable
    {
        public void Dispose()
        {
            if (!started || System.Runtime.GCSettings.LatencyMode != System.Runtime.GCLatencyMode.NoGCRegion) return;
            try { GC.EndNoGCRegion(); }
            catch (InvalidOperationException) { } // the budget ran out and a collection ended it meanwhile
        }
    }

    double LearningRate(int step) => Schedule(step, options.Steps);

    /// <summary>The rate at <paramref name="step"/> of <paramref name="steps"/>: linear warm-up to the peak, then cosine down to a tenth of it.</summary>
    double Schedule(int step, int steps)
    {
        if (step < options.WarmupSteps) return options.LearningRate * (step + 1) / options.WarmupSteps;
        double progress = (double)(step - options.WarmupSteps) / Math.Max(1, steps - options.WarmupSteps);
        return options.LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1, progress))));
    }

    /// <summary>The world seed of training example <paramref name="step"/> of a run seeded <paramref name="seed"/> (held-out evaluation seeds start at 2⁶²).</summary>
    public static ulong ExampleSeed(long seed, int step) => (ulong)seed * 1_000_000_000UL + (ulong)step;

    /// <summary>
    /// The loss of one example (the weighted mean over its targets: <paramref name="decisionWeight"/> on proactive
    /// decisions, <paramref name="answerWeight"/> on answers, 1 elsewhere; plus <paramref name="probeWeight"/> times the
    /// perception probe's, <paramref name="changeWeight"/> times the change probe's and <paramref name="pointerWeight"/>
    /// times the pointer loss) and its logits [rows, vocab].
    /// </summary>
    public (Tensor Loss, Tensor Logits) Forward(WorldExample example, double probeWeight = 0, double decisionWeight = 1, double answerWeight = 1, double changeWeight = 0, double pointerWeight = 0)
    {
        var (loss, logits, tapped) = Run(example, probeWeight, decisionWeight, answerWeight);
        if (changeWeight > 0) loss = loss + changeWeight * change.Loss(tapped, example);
        if (pointerWeight > 0 && PointerLoss(tapped, example) is { } pointer) loss = loss + pointerWeight * pointer;
        return (loss, logits);
    }

    /// <summary>
    /// The pointer loss (<see cref="TrainOptions.PointerWeight"/>) given the middle layer's input rows
    /// <paramref name="tapped"/> [rows, embedding]: the mean over answer-predicting rows of −log Σ attention(head → its
    /// targets), under the same mask as the decoder's — head 0 to the frame rows of the objects a question is about in
    /// its evidence frames (<see cref="WorldExample.Evidence"/>), and from a frame's decision and narration rows to the
    /// event's object (<see cref="WorldExample.Narration"/>); head 1 (where there is one) to the time stamp of the frame
    /// a "when" question's answer reads. Null when nothing has targets.
    /// </summary>
    public Tensor? PointerLoss(Tensor tapped, WorldExample example)
    {
        bool all = options.PointerTargets == PointerTargets.All;
        var s = example.Sequence;
        int perFrame = model.Config.TokensPerFrame;
        var rowOfCell = new long[example.Frames * perFrame];
        for (int i = 0; i < s.Length; i++)
            if (s.FrameOf[i] >= 0) rowOfCell[s.FrameOf[i] * perFrame + s.FrameRow[i]] = i;
        long[] Rows(int[] cells) => [.. cells.Select(cell => rowOfCell[cell])];
        var onCells = new List<(int Row, long[] Targets)>();
        var onStamps = new List<(int Row, long[] Targets)>();
        int frame = -1, branch = -1, answerRow = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s.BranchStart[i] < 0)
            {
                // A frame's decision and the narration after it: the event's object, before and after.
                if (s.Decision[i]) frame++;
                if (all && s.Labels[i] >= 0 && frame >= 0 && frame < example.Narration.Count && example.Narration[frame].Length > 0) onCells.Add((i, Rows(example.Narration[frame])));
                continue;
            }
            if (s.BranchStart[i] == i) { branch++; answerRow = 0; }
            if (s.Labels[i] < 0) continue;
            int k = answerRow++;
            // Answers only: every row at the last row's cells (all of the question's objects).
            var evidence = branch < example.Evidence.Count ? example.Evidence[branch][all ? k : ^1] : [];
            if (evidence.Length > 0) onCells.Add((i, Rows(evidence)));
            if (all && example.Questions[branch] is { Kind: VidKV.World.QuestionKind.WhenEntered or VidKV.World.QuestionKind.WhenLeft } q)
                onStamps.Add((i, [.. s.Stamps[q.EvidenceTicks.Max()].Select(r => (long)r)]));
        }
        var cells = PointerLoss(tapped, s, 0, onCells);
        var stamps = model.Config.Heads < 2 ? null : PointerLoss(tapped, s, 1, onStamps);
        return cells is null ? stamps : stamps is null ? cells : cells + stamps;
    }

    /// <summary>−log of the attention <paramref name="head"/> gives each query row's targets, averaged; null when there are none.</summary>
    Tensor? PointerLoss(Tensor tapped, TrainingSequence s, int head, List<(int Row, long[] Targets)> aimed)
    {
        if (aimed.Count == 0) return null;
        int n = s.Length, q = aimed.Count;
        var mask = new float[q * n];
        var aim = new float[q * n];
        Array.Fill(mask, float.NegativeInfinity);
        Array.Fill(aim, float.NegativeInfinity);
        for (int k = 0; k < q; k++)
        {
            int row = aimed[k].Row;
            Array.Clear(mask, k * n, s.VisibleUntil[row]);
            if (s.BranchStart[row] >= 0) Array.Clear(mask, k * n + s.BranchStart[row], row - s.BranchStart[row] + 1);
            foreach (long t in aimed[k].Targets) aim[k * n + t] = 0;
        }
        long[] queries = [.. aimed.Select(a => (long)a.Row)];
        var logits = model.AttentionLogits(TapLayers, head, tapped, tensor(s.Positions), queries) + tensor(mask).view(q, n);
        var logProbabilities = F.log_softmax(logits, 1);
        return -(logProbabilities + tensor(aim).view(q, n)).logsumexp(1).mean();
    }

    /// <summary>The change probe's loss on <paramref name="example"/> as the model and probe stand (no gradient).</summary>
    public double ChangeLoss(WorldExample example)
    {
        using var noCollection = NoCollection();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return change.Loss(Run(example, 0, 1, 1).Tapped, example).item<float>();
    }

    (Tensor Loss, Tensor Logits, Tensor Tapped) Run(WorldExample example, double probeWeight, double decisionWeight, double answerWeight)
    {
        var s = example.Sequence;
        var c = model.Config;
        int rows = s.Length, size = c.ImageSize;
        var frames = model.EncodeFrames(tensor(example.Pixels).view(example.Frames, 3, size, size)); // [F, R, D]
        var flat = frames.view(-1, c.Embedding);
        var frameIndex = new long[rows];
        var isFrame = new bool[rows];
        for (int i = 0; i < rows; i++)
            if (s.FrameOf[i] >= 0)
            {
                frameIndex[i] = (long)s.FrameOf[i] * c.TokensPerFrame + s.FrameRow[i];
                isFrame[i] = true;
            }
        var inputs = where(tensor(isFrame).unsqueeze(1), flat.index_select(0, tensor(frameIndex)), model.EmbedTokens(tensor(s.Tokens)));
        var logits = model.Decode(inputs.unsqueeze(0), tensor(s.Positions).unsqueeze(0), Mask(s), TapLayers, out var tapped)[0];
        Tensor loss;
        if (decisionWeight == 1 && answerWeight == 1) loss = F.cross_entropy(logits, tensor(s.Labels), ignore_index: -100);
        else
        {
            var weights = new float[rows];
            for (int i = 0; i < rows; i++)
                if (s.Labels[i] >= 0) weights[i] = (float)(s.Decision[i] ? decisionWeight : s.BranchStart[i] >= 0 ? answerWeight : 1);
            var w = tensor(weights);
            loss = (F.cross_entropy(logits, tensor(s.Labels), ignore_index: -100, reduction: nn.Reduction.None) * w).sum() / weights.Sum();
        }
        if (probeWeight > 0) loss = loss + probeWeight * probe.Loss(flat, example.Cells);
        return (loss, logits, tapped[0]);
    }

    /// <summary>The additive attention mask [1, 1, rows, rows]: stream rows causal, a question's branch its stream prefix and itself causally.</summary>
    static Tensor Mask(TrainingSequence s)
    {
        int n = s.Length;
        var mask = new float[n * n];
        Array.Fill(mask, float.NegativeInfinity);
        for (int i = 0; i < n; i++)
        {
            Array.Clear(mask, i * n, s.VisibleUntil[i]);
            if (s.BranchStart[i] >= 0) Array.Clear(mask, i * n + s.BranchStart[i], i - s.BranchStart[i] + 1);
        }
        return tensor(mask).view(1, 1, n, n);
    }

    /// <summary>
    /// The training-only linear head on frame rows (<see cref="TrainOptions.ProbeWeight"/>); never exported. Per row:
    /// whether its cell holds an object's centre, and for such a cell the object's colour, shape, size, 3×3 region and
    /// where in the cell.
    /// </summary>
    sealed class PerceptionProbe : nn.Module
    {
        readonly Parameter weight, bias;
        // Classes without "none" (CellTargets' class k is output k − 1 here).
        readonly int colours = CellTargets.Colours - 1, shapes = CellTargets.Shapes - 1, sizes = CellTargets.Sizes - 1, regions = CellTargets.Regions - 1;
        int Offset => colours + shapes + sizes + regions;
        int Occupancy => Offset + 2;

        public PerceptionProbe(int embedding) : base("perception_probe")
        {
            int outputs = Occupancy + 1;
            weight = new Parameter(normal(0, 1 / Math.Sqrt(embedding), [outputs, embedding]));
            bias = new Parameter(zeros(outputs));
            RegisterComponents();
        }

        /// <summary>Each cell's most likely colour, shape, size and region classes (CellTargets' numbering; 0 where the probe sees no object).</summary>
        public (long[] Colour, long[] Shape, long[] Size, long[] Region) Predict(Tensor rows)
        {
            var y = F.linear(rows, weight, bias);
            var occupied = (y.select(1, Occupancy) > 0).to(int64);
            long[] Best(int start, int count) => ((y.narrow(1, start, count).argmax(1) + 1) * occupied).data<long>().ToArray();
            return (Best(0, colours), Best(colours, shapes), Best(colours + shapes, sizes), Best(colours + shapes + sizes, regions));
        }

        /// <summary>
        /// Occupancy's binary cross-entropy over every cell, plus the cross-entropy of colour, shape, size and region and
        /// the squared error of the offset over the cells that hold an object only — most cells are empty, and averaged
        /// over every cell with a "none" class those terms mostly learnt "none" (a probe fitted so read an object's
        /// shape 15–20 % of the time).
        /// </summary>
        public Tensor Loss(Tensor rows, CellTargets targets)
        {
            var y = F.linear(rows, weight, bias);
            var occupied = tensor(targets.Size.Select(v => v > 0 ? 1f : 0f).ToArray());
            float objects = Math.Max(1, targets.Size.Count(v => v > 0));
            // Empty cells get class 0 (any valid class): their terms are multiplied by zero.
            Tensor Classes(long[] values) => tensor(values.Select(v => Math.Max(0, v - 1)).ToArray());
            Tensor OnObjects(int start, int count, long[] values) =>
                (F.cross_entropy(y.narrow(1, start, count), Classes(values), reduction: nn.Reduction.None) * occupied).sum() / objects;
            var predicted = y.narrow(1, Offset, 2).sigmoid();
            var where = ((predicted - tensor(targets.Offset).view(-1, 2)).pow(2) * occupied.unsqueeze(1)).sum() / objects;
            return F.binary_cross_entropy_with_logits(y.select(1, Occupancy), occupied)
                + OnObjects(0, colours, targets.Colour) + OnObjects(colours, shapes, targets.Shape)
                + OnObjects(colours + shapes, sizes, targets.Size) + OnObjects(colours + shapes + sizes, regions, targets.Region) + 10 * where;
        }
    }

    /// <summary>
    /// The training-only linear head on the decoder's middle rows (<see cref="TrainOptions.ChangeWeight"/>); never
    /// exported. At a frame row: the event class of its cell and whether its object moved; at a frame's closing row: the
    /// frame's event class.
    /// </summary>
    sealed class ChangeProbe : nn.Module
    {
        readonly Parameter weight, bias;
        readonly int classes = ChangeTargets.Classes;

        public ChangeProbe(int embedding) : base("change_probe")
        {
            weight = new Parameter(normal(0, 1 / Math.Sqrt(embedding), [classes + 1, embedding]));
            bias = new Parameter(zeros(classes + 1));
            RegisterComponents();
        }

        /// <summary>The rows of <paramref name="hidden"/> [rows, embedding] that hold each frame cell (cell order) and each frame's closing row (frame order).</summary>
        static (long[] Cells, long[] Closing) Rows(TrainingSequence s, int cellsPerFrame, int frames)
        {
            var cells = new long[frames * cellsPerFrame];
            var closing = new long[frames];
            int frame = 0;
            for (int i = 0; i < s.Length; i++)
            {
                if (s.FrameOf[i] >= 0) cells[s.FrameOf[i] * cellsPerFrame + s.FrameRow[i]] = i;
                else if (s.Decision[i]) closing[frame++] = i;
            }
            return (cells, closing);
        }

        /// <summary>
        /// Each frame's event class as the probe reads it from its closing row (<paramref name="hidden"/>: the tapped rows
        /// of <paramref name="example"/>'s sequence).
        /// </summary>
        public long[] PredictFrames(Tensor hidden, WorldExample example)
        {
            var (_, closing) = Rows(example.Sequence, example.Changes.Cell.Length / Math.Max(1, example.Frames), example.Frames);
            return F.linear(hidden.index_select(0, tensor(closing)), weight, bias).narrow(1, 0, classes).argmax(1).data<long>().ToArray();
        }

        /// <summary>
        /// The cross-entropy of the event class over event cells and over quiet cells, each averaged apart (events are
        /// rare: averaged together the head learnt "none"), the same over frames, and the moved bit's binary cross-entropy.
        /// </summary>
        public Tensor Loss(Tensor hidden, WorldExample example)
        {
            var t = example.Changes;
            int frames = example.Frames, perFrame = t.Cell.Length / Math.Max(1, frames);
            var (cellRows, closing) = Rows(example.Sequence, perFrame, frames);
            var atCells = F.linear(hidden.index_select(0, tensor(cellRows)), weight, bias);
            var atFrames = F.linear(hidden.index_select(0, tensor(closing)), weight, bias);
            Tensor Balanced(Tensor logits, long[] targets)
            {
                var each = F.cross_entropy(logits.narrow(1, 0, classes), tensor(targets.Select(v => Math.Max(0, v)).ToArray()), reduction: nn.Reduction.None);
                var total = zeros(1);
                foreach (bool eventful in new[] { true, false })
                {
                    var chosen = targets.Select(v => v >= 0 && (v > 0) == eventful ? 1f : 0f).ToArray();
                    float n = chosen.Sum();
                    if (n > 0) total = total + (each * tensor(chosen)).sum() / n;
                }
                return total;
            }
            var known = t.Moved.Select(v => v >= 0 ? 1f : 0f).ToArray();
            var movedLoss = F.binary_cross_entropy_with_logits(atCells.select(1, classes), tensor(t.Moved.Select(v => v > 0 ? 1f : 0f).ToArray()), reduction: nn.Reduction.None);
            var moved = (movedLoss * tensor(known)).sum() / Math.Max(1f, known.Sum());
            return (Balanced(atCells, t.Cell) + Balanced(atFrames, t.Frame) + moved).squeeze();
        }
    }

    /// <summary>
    /// Scores <paramref name="seeds"/>' examples: a question is right when every token of its answer and the end of the
    /// utterance are the model's greedy choice (teacher-forced: the same as generating greedily, since each choice then
    /// equals its input); a frame is narrated when p(silence) falls below <see cref="SilenceThreshold"/>, and a hit when
    /// it is an event frame and the first token (the greedy pick with silence zeroed, as VidKV's proactive mode picks it)
    /// is the narration's and every later token of it is the greedy choice too (the narrations are in the evaluated
    /// streams, so this is the whole comment, as proactive mode would say it).
    /// </summary>
    /// <param name="seeds">the held-out clips' world seeds</param>
    /// <param name="wrong">called with each question answered wrong and the model's greedy tokens at its answer's rows
    /// (teacher-forced: each after the right tokens before it)</param>
    public EvalResult Evaluate(IEnumerable<ulong> seeds, Action<VidKV.World.WorldQuestion, long[]>? wrong = null)
    {
        model.eval();
        int questions = 0, correct = 0, eventFrames = 0, narrated = 0, comments = 0, quiet = 0, quietKept = 0;
        int changeEvents = 0, changeEventsRight = 0, changeQuiet = 0, changeQuietRight = 0, pointed = 0;
        double pointerSum = 0;
        var byKind = new Dictionary<VidKV.World.QuestionKind, (int Correct, int Asked)>();
        var tally = new ProbeTally();
        double lossSum = 0;
        int count = 0;
        long silence = examples.SilenceToken;
        using (no_grad())
            foreach (ulong seed in seeds)
            {
                using var noCollection = NoCollection();
                using var scope = NewDisposeScope();
                var example = examples.Make(seed, narrate: true);
                var (loss, logits, tapped) = Run(example, 0, 1, 1);
                lossSum += loss.item<float>();
                var frameEvents = change.PredictFrames(tapped, example);
                if (PointerLoss(tapped, example) is { } pointer) { pointerSum += pointer.item<float>(); pointed++; }
                for (int f = 1; f < example.Frames; f++)
                {
                    bool eventful = example.Changes.Frame[f] > 0, right = frameEvents[f] == example.Changes.Frame[f];
                    if (eventful) { changeEvents++; if (right) changeEventsRight++; }
                    else { changeQuiet++; if (right) changeQuietRight++; }
                }
                var frames = model.EncodeFrames(tensor(example.Pixels).view(example.Frames, 3, model.Config.ImageSize, model.Config.ImageSize));
                tally.Add(probe.Predict(frames.view(-1, model.Config.Embedding)), example.Cells);
                count++;
                var s = example.Sequence;
                var best = logits.argmax(-1).data<long>().ToArray();
                // What a comment starts with: VidKV's proactive mode zeroes the silence token before its greedy pick.
                var spoken = logits.index_fill(1, tensor(new[] { silence }), float.NegativeInfinity).argmax(-1).data<long>().ToArray();
                var probabilities = F.softmax(logits, -1);
                var pSilence = probabilities.select(1, silence).data<float>().ToArray();
                // Branches: one per question, in order; a branch's targets run from its first label to its last.
                int row = 0, firstQuestion = questions;
                while (row < s.Length)
                {
                    if (s.BranchStart[row] < 0)
                    {
                        if (s.Decision[row])
                        {
                            // A frame's closing row: its proactive decision.
                            bool silentTarget = s.Labels[row] == silence;
                            bool speaks = pSilence[row] < SilenceThreshold;
                            if (silentTarget) { quiet++; if (!speaks) quietKept++; }
                            else { eventFrames++; }
                            if (speaks) comments++;
                            if (speaks && !silentTarget && spoken[row] == s.Labels[row])
                            {
                                // The rest of the comment: its tokens, each learning the next, up to the end of the utterance.
                                bool whole = true;
                                for (int next = row + 1; next < s.Length && s.Labels[next] >= 0 && !s.Decision[next]; next++)
                                    whole &= best[next] == s.Labels[next];
                                if (whole) narrated++;
                            }
                        }
                        row++;
                        continue;
                    }
                    int start = row;
                    bool right = true;
                    var said = new List<long>();
                    while (row < s.Length && s.BranchStart[row] == start)
                    {
                        if (s.Labels[row] >= 0)
                        {
                            said.Add(best[row]);
                            if (best[row] != s.Labels[row]) right = false;
                        }
                        row++;
                    }
                    var question = example.Questions[questions - firstQuestion];
                    if (!right) wrong?.Invoke(question, [.. said]);
                    var kind = question.Kind;
                    var (kindRight, kindAsked) = byKind.GetValueOrDefault(kind);
                    byKind[kind] = (kindRight + (right ? 1 : 0), kindAsked + 1);
                    questions++;
                    if (right) correct++;
                }
            }
        model.train();
        return new EvalResult(questions, correct, eventFrames, narrated, comments, quiet, quietKept, count == 0 ? 0 : lossSum / count)
        {
            ByKind = byKind,
            Probe = tally.Accuracy,
            Pointer = pointed == 0 ? 0 : Math.Exp(-pointerSum / pointed),
            Change = (changeEvents == 0 ? 0 : (double)changeEventsRight / changeEvents, changeQuiet == 0 ? 0 : (double)changeQuietRight / changeQuiet),
        };
    }
}
