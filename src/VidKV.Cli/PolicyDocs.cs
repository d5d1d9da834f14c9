using System.Text;
using VidKV.Cache;

namespace VidKV.Cli;

/// <summary>
/// The registered KV policies (<see cref="KvPolicies.All"/>) as text: the <c>--policy</c> help of every command that
/// takes specs, and the markdown table <c>vidkv kv policies</c> prints and the README holds (a test keeps them equal).
/// </summary>
public static class PolicyDocs
{
    /// <summary><paramref name="lead"/>, the spec syntax, then one line per policy with its options and defaults.</summary>
    public static string SpecHelp(string lead)
    {
        var text = new StringBuilder(lead);
        text.Append(" A spec is name[:option=value,…]; reducer+retriever composes; a bare budget is --budget");
        text.Append(" ('vidkv kv policies' explains every option):");
        foreach (var policy in KvPolicies.All)
            text.Append("\n  ").Append(string.Join('|', [policy.Name, .. policy.Aliases]))
                .Append(policy.Options.Count > 0 ? ": " + policy.Synopsis : "");
        return text.ToString();
    }

    /// <summary>One row per policy: its names, what it does (and the paper), and each option with its default and meaning.</summary>
    public static string MarkdownTable()
    {
        var text = new StringBuilder();
        text.Append("| policy | what it does | options (default) |\n");
        text.Append("| --- | --- | --- |\n");
        foreach (var policy in KvPolicies.All)
        {
            string names = string.Join(", ", new[] { policy.Name }.Concat(policy.Aliases).Select(n => $"`{n}`"));
            string options = policy.Options.Count == 0 ? "none"
                : string.Join("; ", policy.Options.Select(o => $"`{o.Name}` ({(o.Required ? "required" : o.DefaultText)}): {o.Doc}"))
                  + (policy.Example.Length > 0 ? $"; e.g. `{policy.Name}:{policy.Example}`" : "");
            text.Append($"| {names} | {policy.Doc} | {options} |\n");
        }
        return text.ToString();
    }
}
