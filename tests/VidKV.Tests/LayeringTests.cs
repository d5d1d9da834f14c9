using System.Text.RegularExpressions;

namespace VidKV.Tests;

/// <summary>The layers of DESIGN.md reference only downward; a file that reaches up or sideways fails here.</summary>
public class LayeringTests
{
    static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Tensors"] = [],
        ["Formats"] = ["Tensors"],
        ["Text"] = ["Formats"],
        ["Cache"] = ["Tensors"],
        ["Models"] = ["Tensors", "Formats", "Text", "Cache"],
        ["Engine"] = ["Tensors", "Formats", "Text", "Cache", "Models"],
    };

    [Fact]
    public void LayersOnlyReferenceDownward()
    {
        string core = Path.Combine(TestData.RepositoryRoot, "src", "VidKV.Core");
        var violations = new List<string>();
        var folders = Directory.GetDirectories(core).Select(Path.GetFileName).Where(f => f is not ("bin" or "obj")).ToArray();
        Assert.Equal(Allowed.Keys.Order(), folders.Order());
        foreach (var (layer, allowed) in Allowed)
        {
            foreach (string file in Directory.EnumerateFiles(Path.Combine(core, layer), "*.cs", SearchOption.AllDirectories))
            {
                string text = File.ReadAllText(file);
                foreach (Match m in Regex.Matches(text, @"\bVidKV\.(\w+)"))
                {
                    string target = m.Groups[1].Value;
                    if (target != layer && Allowed.ContainsKey(target) && !allowed.Contains(target))
                        violations.Add($"{Path.GetRelativePath(core, file)} references {target}");
                }
            }
        }
        Assert.True(violations.Count == 0, string.Join("\n", violations.Distinct()));
    }
}
