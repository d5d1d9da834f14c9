using System.Runtime.InteropServices;
using VidKV.Cli;
using VidKV.Formats;
using VidKV.Models;
using Xunit;

namespace VidKV.Tests;

/// <summary>Prompts with images: mtmd's chunk layout, embeddings from image files, and the CLI's bad-input paths.</summary>
public class MediaPromptTests
{
    const string Vision = "vision/models/";

    /// <summary>
    /// A LLaVA prompt of one marker (no BOS, as the reference called mtmd) is the image's entries back to back — the
    /// chunk sizes mtmd listed — and each chunk's rows are llama.cpp's embeddings (from the image file itself: decode,
    /// preprocess, encode), within the projector's fp16-bucket tolerance (<see cref="VisionModelTests"/>).
    /// </summary>
    [Theory]
    [InlineData("tiny-llava-siglip-random", "gradient_97x61")]
    [InlineData("tiny-llava-siglip-random", "pattern_64x64")]
    [InlineData("tiny-llava-clip-random", "pattern_64x64")]
    public void MlpPromptIsTheEntriesEmbeddingsBackToBack(string model, string image)
    {
        string name = $"{model}.{image}";
        var json = TestData.Json($"vision/reference/{name}.json");
        using var text = ModelLoader.Load(TestData.Model("tiny-qwen2-random"));
        using var vision = VisionModel.Load(TestData.File_($"{Vision}{model}.mmproj.gguf"));
        var picture = ImageReader.Read(TestData.File_($"vision/images/{image}.ppm"));
        var prompt = MediaPrompt.Build(text, vision, MediaPrompt.Marker, [picture], addSpecial: false);

        var expectedChunks = json.GetProperty("mtmd_chunks").EnumerateArray().ToList();
        Assert.Equal(expectedChunks.Count, prompt.Chunks.Count);
        bool clsFirst = model.Contains("clip");
        var expected = MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(TestData.File_(
            $"vision/reference/{name}.{(clsFirst ? "embd.cls-first.numpy-emulated" : "embd.noflash")}.f32.bin"))).ToArray();
        for (int i = 0; i < expectedChunks.Count; i++)
        {
            Assert.Equal("image", expectedChunks[i].GetProperty("type").GetString());
            var chunk = Assert.IsType<EmbeddingChunk>(prompt.Chunks[i]);
            Assert.Equal(expectedChunks[i].GetProperty("n_tokens").GetInt32(), chunk.Count);
            int offset = expectedChunks[i].GetProperty("embd_row_offset").GetInt32() * chunk.Width;
            for (int k = 0; k < chunk.Rows.Length; k++)
                Assert.True(Math.Abs(chunk.Rows[k] - expected[offset + k]) <= 1e-3f, $"{name} chunk {i} value {k}: {chunk.Rows[k]} vs {expected[offset + k]}");
        }
    }

    /// <summary>Text around the markers is tokenized piece by piece; the BOS goes first; markers and images must pair up.</summary>
    [Fact]
    public void TextAroundMarkersKeepsItsTokensAndBosLeads()
    {
        using var text = ModelLoader.Load(TestData.Model("tiny-qwen2-random"));
        using var vision = VisionModel.Load(TestData.File_($"{Vision}tiny-llava-siglip-random.mmproj.gguf"));
        var picture = ImageReader.Read(TestData.File_("vision/images/pattern_64x64.ppm"));
        var prompt = MediaPrompt.Build(text, vision, $"look: {MediaPrompt.Marker} and {MediaPrompt.Marker}!", [picture, picture]);
        var kinds = prompt.Chunks.Select(c => c is TextChunk ? "text" : "image").ToArray();
        Assert.Equal(["text", "image", "text", "image", "text"], kinds);
        var first = (TextChunk)prompt.Chunks[0];
        var plain = text.Tokenizer.Encode("look: ", addSpecial: false, parseSpecial: true);
        int bos = text.Vocabulary.AddBos ? 1 : 0;
        Assert.Equal(plain, first.Tokens.Skip(bos));
        Assert.Equal(text.Tokenizer.Encode(" and ", addSpecial: false, parseSpecial: true), ((TextChunk)prompt.Chunks[2]).Tokens);
        Assert.Equal(((EmbeddingChunk)prompt.Chunks[1]).Rows, ((EmbeddingChunk)prompt.Chunks[3]).Rows);
        Assert.Throws<ArgumentException>(() => MediaPrompt.Build(text, vision, MediaPrompt.Marker, [picture, picture]));
    }

    public static TheoryData<string, string> BadInputs => new()
    {
        { "no-mmproj", "--image needs --mmproj" },
        { "corrupt-image", "image.png: " },
        { "width-mismatch", "not a pair" },
        { "unsupported-projector", "clip.projector_type 'ldp' is not supported" },
        { "marker-count", "2 <__media__> markers for 1 images" },
    };

    /// <summary>Each bad input of an image prompt is one line naming what is wrong, exit code 2.</summary>
    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadImageInputIsOneLineAndExitCode2(string kind, string problem)
    {
        using var dir = new TempDirectory();
        string textModel = TestData.Model("tiny-qwen2-random"), mmproj = TestData.File_($"{Vision}tiny-llava-siglip-random.mmproj.gguf");
        string image = TestData.File_("vision/images/pattern_64x64.png"), prompt = "describe";
        switch (kind)
        {
            case "corrupt-image":
                image = Path.Combine(dir.Path, "image.png");
                var bytes = File.ReadAllBytes(TestData.File_("vision/images/pattern_64x64.png"));
                File.WriteAllBytes(image, bytes[..(bytes.Length / 2)]);
                break;
            case "width-mismatch":
                textModel = Path.Combine(dir.Path, "small.gguf");
                RandomModel.Write(textModel, RandomModelShape.Small, Tensors.GgmlType.F32);
                break;
            case "unsupported-projector":
                mmproj = Path.Combine(dir.Path, "ldp.gguf");
                new GgufWriter().Add("general.architecture", "clip").Add("clip.has_vision_encoder", true).Add("clip.projector_type", "ldp").Write(mmproj);
                break;
            case "marker-count":
                prompt = $"{MediaPrompt.Marker} vs {MediaPrompt.Marker}";
                break;
        }
        string[] args = kind == "no-mmproj"
            ? ["generate", "-m", textModel, "--image", image, "-p", prompt, "-n", "1"]
            : ["generate", "-m", textModel, "--mmproj", mmproj, "--image", image, "-p", prompt, "-n", "1"];
        var stderr = new StringWriter();
        Assert.Equal(2, CliRunner.Run(CliApp.BuildRoot(), args, stderr));
        string[] lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains(problem, lines[0]);
    }
}
