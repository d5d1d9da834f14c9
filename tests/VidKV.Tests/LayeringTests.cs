using System.Xml.Linq;

namespace VidKV.Tests;

/// <summary>
/// The layers of DESIGN.md are one assembly each, referencing only the layers below them and without transitive
/// references, so the compiler rejects any reach up or sideways (relative namespace references included). This test
/// keeps the project files equal to the table.
/// </summary>
public class LayeringTests
{
    static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Tensors"] = [],
        ["Formats"] = ["Tensors"],
        ["Text"] = ["Formats"],
        ["Cache"] = ["Tensors"],
        ["Models"] = ["Tensors", "Formats", "Text", "Cache"],
        ["Video"] = ["Tensors", "Formats"],
        ["Engine"] = ["Tensors", "Formats", "Text", "Cache", "Models", "Video"],
        ["Server"] = ["Formats", "Text", "Cache", "Models", "Video", "Engine"],
        // The synthetic world makes training and evaluation data; no engine layer may depend on it.
        ["World"] = ["Formats", "Video"],
    };

    [Fact]
    public void EachLayerIsAnAssemblyReferencingOnlyTheLayersBelow()
    {
        string src = Path.Combine(TestData.RepositoryRoot, "src");
        var layers = Directory.GetDirectories(src).Select(Path.GetFileName).Where(d => d!.StartsWith("VidKV.", StringComparison.Ordinal) && d != "VidKV.Cli")
            .Select(d => d!["VidKV.".Length..]).Order().ToArray();
        Assert.Equal(Allowed.Keys.Order(), layers);
        foreach (var (layer, allowed) in Allowed)
        {
            var project = XDocument.Load(Path.Combine(src, $"VidKV.{layer}", $"VidKV.{layer}.csproj"));
            var references = project.Descendants("ProjectReference").Select(r => Path.GetFileNameWithoutExtension(r.Attribute("Include")!.Value.Replace('\\', '/'))["VidKV.".Length..]);
            Assert.Equal(allowed.Order(), references.Order());
        }
        var props = XDocument.Load(Path.Combine(src, "Directory.Build.props"));
        Assert.Equal("true", props.Descendants("DisableTransitiveProjectReferences").Single().Value);
    }
}
