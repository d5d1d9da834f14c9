using System.CommandLine;
using VidKV.Engine;
using VidKV.Formats;
using VidKV.Models;
using VidKV.Text;

namespace VidKV.Cli;

/// <summary><c>vidkv generate</c>: continue a prompt; the continuation goes to stdout, statistics to stderr.</summary>
static class GenerateCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(required: false);
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Prompt text (default \"Once upon a time\")." };
        var file = new Option<string?>("--file", "-f") { Description = "Read the prompt from this file." };
        var predict = new Option<int>("--n-predict", "-n") { Description = "Tokens to generate (-1 = until end of generation or a full context).", DefaultValueFactory = _ => 128 };
        var context = CommonOptions.ContextSize(4096);
        var temperature = new Option<float>("--temp") { Description = "Temperature; 0 = greedy.", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "Top-k sampling (0 = off).", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "Top-p sampling (1 = off).", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "Min-p sampling (0 = off).", DefaultValueFactory = _ => 0.05f };
        var repeatPenalty = new Option<float>("--repeat-penalty") { Description = "Penalty for repeated tokens (1 = off).", DefaultValueFactory = _ => 1.0f };
        var repeatLastN = new Option<int>("--repeat-last-n") { Description = "Tokens the repetition penalty looks back over (-1 = all).", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed", "-s") { Description = "Random seed (-1 = random).", DefaultValueFactory = _ => -1 };
        var chat = new Option<bool>("--chat") { Description = "Wrap the prompt as a user message in the model's chat template (ChatML or Llama-3)." };
        var system = new Option<string?>("--system") { Description = "System message for --chat." };
        var mmproj = new Option<string?>("--mmproj") { Description = "Vision projector (llama.cpp mmproj GGUF) paired with -m; needed for --image unless -m is a Hugging Face vision-language folder (then the folder's own vision tower is used)." };
        var image = new Option<string[]>("--image") { Description = $"Image file (PNG, JPEG, BMP, PPM); repeat for several. Each goes where -p has a {MediaPrompt.Marker} marker, else all go before the text.", AllowMultipleArgumentsPerToken = false };
        var visionExact = CommonOptions.VisionExact();
        var threads = CommonOptions.Threads();
        var cacheK = CommonOptions.CacheTypeK();
        var cacheV = CommonOptions.CacheTypeV();

        var command = new Command("generate", "Generate text from a prompt (like llama-completion). Without -m it uses a random-weight demo model.")
            .With(model, prompt, file, predict, context, temperature, topK, topP, minP, repeatPenalty, repeatLastN, seed, chat, system, mmproj, image, visionExact, threads, cacheK, cacheV);
        command.SetAction(r =>
        {
            Tensors.WorkerPool.SetSharedThreadCount(Math.Max(1, r.GetValue(threads)));
            string path = r.GetValue(model) ?? CommonOptions.DefaultModelPath(Console.Error);
            string text = r.GetValue(file) is { } f ? File.ReadAllText(f) : r.GetValue(prompt) ?? "Once upon a time";
            string[] imagePaths = r.GetValue(image) ?? [];
            string? visionPath = r.GetValue(mmproj);
            // A Hugging Face folder holds its own vision tower (VisionModel.Load explains when its config.json has none).
            if (imagePaths.Length > 0 && visionPath == null) visionPath = HuggingFaceVision.FolderOf(path);
            if (imagePaths.Length > 0 && visionPath == null) throw new ArgumentException("--image needs --mmproj: the vision projector (mmproj GGUF) that goes with -m");
            // As llama-mtmd-cli: without markers, one per image goes before the text.
            if (imagePaths.Length > 0 && !text.Contains(MediaPrompt.Marker)) text = string.Concat(Enumerable.Repeat(MediaPrompt.Marker, imagePaths.Length)) + text;
            var images = imagePaths.Select(ImageReader.Read).ToList();
            using var m = ModelLoader.Load(path);
            using var vision = visionPath != null ? VisionModel.Load(visionPath, r.GetValue(visionExact)) : null;
            if (r.GetValue(chat))
            {
                var messages = new List<ChatMessage>();
                if (r.GetValue(system) is { } s) messages.Add(new("system", s));
                messages.Add(new("user", text));
                text = ChatTemplate.Apply(ChatTemplate.Detect(m.Vocabulary.ChatTemplate), messages);
            }
            int ctx = r.GetValue(context) is > 0 and var c ? Math.Min(c, m.Config.ContextLength) : m.Config.ContextLength;
            IReadOnlyList<PromptChunk> chunks = vision != null
                ? MediaPrompt.Build(m, vision, text, images).Chunks
                : [new TextChunk(m.Tokenizer.Encode(text, addSpecial: true, parseSpecial: true).ToArray())];
            int promptRows = chunks.Sum(c => c.Count);
            if (promptRows == 0) throw new ArgumentException("the prompt is empty and the model adds no BOS token: give a prompt with -p");
            if (promptRows >= ctx) throw new ArgumentException($"the prompt has {promptRows} tokens, which does not fit the context of {ctx} (-c)");
            int n = r.GetValue(predict) is var p && p >= 0 ? Math.Min(p, ctx - promptRows) : ctx - promptRows;
            var options = new SamplingOptions
            {
                Temperature = r.GetValue(temperature), TopK = r.GetValue(topK), TopP = r.GetValue(topP), MinP = r.GetValue(minP),
                RepeatPenalty = r.GetValue(repeatPenalty), RepeatLastN = r.GetValue(repeatLastN),
                Seed = r.GetValue(seed) is >= 0 and var sd ? sd : null,
            };

            Console.Error.WriteLine($"model: {path} ({m.Config.Architecture}, {m.Config.LayerCount} layers, {GgmlName(m)}), context {ctx}, prompt {promptRows} tokens{(images.Count > 0 ? $" ({chunks.OfType<EmbeddingChunk>().Sum(c => c.Count)} from {images.Count} image(s))" : "")}");
            var stats = new GenerationStats();
            using var stdout = Console.OpenStandardOutput();
            using var state = m.CreateState(ctx, CommonOptions.ParseCacheType(r.GetValue(cacheK)!), CommonOptions.ParseCacheType(r.GetValue(cacheV)!));
            foreach (var token in Generator.Generate(m, state, chunks, n, new Sampler(options), stats))
            {
                if (token.IsEndOfGeneration) break;
                stdout.Write(token.Piece);
                stdout.Flush();
            }
            stdout.Write("\n"u8);
            Console.Error.WriteLine($"prompt eval: {stats.PromptTokens} tokens in {stats.PromptTime.TotalMilliseconds:F1} ms ({stats.PromptTokensPerSecond:F2} tokens/s)");
            Console.Error.WriteLine($"eval: {stats.GeneratedTokens} tokens in {stats.GenerationTime.TotalMilliseconds:F1} ms ({stats.GeneratedTokensPerSecond:F2} tokens/s)");
            return 0;
        });
        return command;
    }

    static string GgmlName(DecoderModel m) => Tensors.GgmlTypes.Name(m.WeightType);
}
