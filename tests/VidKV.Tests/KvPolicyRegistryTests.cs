using System.CommandLine;
using System.Globalization;
using VidKV.Cache;
using VidKV.Cli;

namespace VidKV.Tests;

/// <summary>
/// The policy registry (<see cref="KvPolicies.All"/>) against what reads it: spec parsing, the policies' own names,
/// the CLI's <c>--policy</c> help and <c>vidkv kv policies</c>, and the README's copy of that table.
/// </summary>
public class KvPolicyRegistryTests
{
    public static TheoryData<string> Names => new(KvPolicies.All.Select(d => d.Name));

    /// <summary>Test values for required options (a registered policy with a new one needs a line here).</summary>
    static readonly Dictionary<string, string> RequiredValues = new() { ["pattern"] = "{heads}" };

    /// <summary>The policy's name and its required options only: everything else at its default.</summary>
    static string DefaultsSpec(KvPolicyDescriptor policy)
    {
        var required = policy.Options.Where(o => o.Required).ToArray();
        foreach (var option in required)
            Assert.True(RequiredValues.ContainsKey(option.Name), $"policy '{policy.Name}': give the tests a value for its required option '{option.Name}'");
        return KvCacheTests.ResolveSpec(required.Length == 0 ? policy.Name : $"{policy.Name}:{string.Join(',', required.Select(o => $"{o.Name}={RequiredValues[o.Name]}"))}");
    }

    /// <summary>
    /// Every policy's defaults parse, at odd and even budgets, and its <see cref="KvPolicy.Name"/> is a complete spec:
    /// parsed back it gives the same name, with or without a different budget to fill in. Aliases build the same
    /// policy, and every default the docs state as a constant is the value the policy gets when the option is absent.
    /// </summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void DefaultsParseAndRoundTripThroughTheName(string name)
    {
        var descriptor = KvPolicies.Find(name)!;
        string spec = DefaultsSpec(descriptor);
        foreach (int budget in new[] { 37, 64, 4096 })
        {
            var policy = KvPolicies.Parse(spec, budget);
            Assert.Equal(name, policy.Name.Split(':')[0]);
            Assert.Equal(policy.Name, KvPolicies.Parse(policy.Name).Name);
            Assert.Equal(policy.Name, KvPolicies.Parse(policy.Name, budget + 1).Name);
            foreach (string alias in descriptor.Aliases)
                Assert.Equal(policy.Name, KvPolicies.Parse(alias.ToUpperInvariant() + spec[name.Length..], budget).Name);
            foreach (var option in descriptor.Options.Where(o => IsConstant(o)))
                Assert.Equal(policy.Name, KvPolicies.Parse($"{spec}{(spec.Contains(':') ? ',' : ':')}{option.Name}={option.DefaultText}", budget).Name);
        }
    }

    /// <summary>
    /// Every option of every policy at a value other than its default (valid, and left as given by the policy's own
    /// limits): the descriptor's <see cref="KvPolicyDescriptor.Example"/>, with the tests' values of required options.
    /// Floats have more digits than a <c>0.###</c> format keeps.
    /// </summary>
    static string NonDefaultOptions(KvPolicyDescriptor policy) =>
        string.Join(',', policy.Options.Where(o => o.Required).Select(o => $"{o.Name}={RequiredValues[o.Name]}")
            .Concat(policy.Example.Split(',', StringSplitOptions.RemoveEmptyEntries)));

    /// <summary>
    /// A policy built with every option away from its default names each of them in <see cref="KvPolicy.Name"/> with
    /// the value given, and that name parses back to the same name; under a culture whose decimal separator is a
    /// comma too (names are specs, so always invariant).
    /// </summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void NonDefaultOptionsRoundTripThroughTheName(string name)
    {
        string options = NonDefaultOptions(KvPolicies.Find(name)!);
        var given = options.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(KvCacheTests.ResolveSpec).ToArray();
        Assert.Equal(KvPolicies.Find(name)!.Options.Select(o => o.Name).Order(), given.Select(o => o.Split('=')[0]).Order());
        var comma = (CultureInfo)CultureInfo.InvariantCulture.Clone();
        comma.NumberFormat.NumberDecimalSeparator = ",";
        comma.NumberFormat.NumberGroupSeparator = ".";
        var culture = CultureInfo.CurrentCulture;
        try
        {
            foreach (var current in new[] { CultureInfo.InvariantCulture, comma })
            {
                CultureInfo.CurrentCulture = current;
                var policy = KvPolicies.Parse(KvCacheTests.ResolveSpec(options.Length == 0 ? name : $"{name}:{options}"), budget: 64);
                string[] named = policy.Name.Contains(':') ? policy.Name[(policy.Name.IndexOf(':') + 1)..].Split(',') : [];
                foreach (string option in given) Assert.Contains(option, named);
                Assert.Equal(policy.Name, KvPolicies.Parse(policy.Name).Name);
            }
        }
        finally { CultureInfo.CurrentCulture = culture; }
    }

    static bool IsConstant(KvPolicyOption option) => option.Kind switch
    {
        KvOptionKind.Int => int.TryParse(option.DefaultText, NumberStyles.Integer, CultureInfo.InvariantCulture, out _),
        KvOptionKind.Float => float.TryParse(option.DefaultText, NumberStyles.Float, CultureInfo.InvariantCulture, out _),
        KvOptionKind.Switch => option.DefaultText == "auto",
        _ => false,
    };

    /// <summary>An unknown policy name lists every registered policy.</summary>
    [Fact]
    public void UnknownPolicyListsTheRegisteredOnes()
    {
        var e = Assert.Throws<KvConfigException>(() => KvPolicies.Parse("qest"));
        Assert.Equal($"policy 'qest': unknown policy (known: {string.Join(", ", KvPolicies.All.Select(d => d.Name))})", e.Message);
    }

    /// <summary>An unknown option is named with its value and the policy's options, before any missing one.</summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void UnknownOptionNamesThePolicysOptions(string name)
    {
        var descriptor = KvPolicies.Find(name)!;
        var e = Assert.Throws<KvConfigException>(() => KvPolicies.Parse($"{name}:colour=blue"));
        Assert.StartsWith($"policy '{name}': unknown option 'colour' (value 'blue'); ", e.Message);
        foreach (var option in descriptor.Options) Assert.Contains(option.Name, e.Message);
    }

    /// <summary>Without a budget a policy parses, or names the one option it is missing: a required one or one that needs the budget.</summary>
    [Theory]
    [MemberData(nameof(Names))]
    public void WithoutABudgetAPolicyParsesOrNamesTheMissingOption(string name)
    {
        var descriptor = KvPolicies.Find(name)!;
        KvPolicy policy;
        try { policy = KvPolicies.Parse(name); }
        catch (KvConfigException e)
        {
            var missing = descriptor.Options.FirstOrDefault(o => e.Message.StartsWith($"policy '{name}': option '{o.Name}' is required ", StringComparison.Ordinal));
            Assert.True(missing != null, e.Message);
            Assert.True(missing.Required || missing.DefaultText.Contains("--budget"), $"{e.Message}: its default is {missing.DefaultText}");
            return;
        }
        Assert.Equal(name, policy.Name.Split(':')[0]);
    }

    [Theory]
    [InlineData("quest", "policy 'quest': option 'budget' is required (or give --budget)")]
    [InlineData("freekv:tau=0.5", "policy 'freekv': option 'budget' is required (or give --budget)")]
    [InlineData("sinkwindow:sinks=2", "policy 'sinkwindow': option 'window' is required (or give --budget)")]
    [InlineData("duo:fraction=0.25", "policy 'duo': option 'pattern' is required (a head pattern file, e.g. from `vidkv kv calibrate`)")]
    [InlineData("quest:bugdet=12", "policy 'quest': unknown option 'bugdet' (value '12'); its options: budget, reuse, dense")]
    [InlineData("full:budget=12", "policy 'full': unknown option 'budget' (value '12'); it takes none")]
    [InlineData("quest:64", "policy 'quest': option '64' is not name=value")]
    [InlineData("quest:budget=abc", "policy 'quest': option 'budget': 'abc' is not an integer")]
    [InlineData("keynorm:ratio=half", "policy 'keynorm': option 'ratio': 'half' is not a number")]
    [InlineData("freekv:budget=64,prefetch=maybe", "policy 'freekv': option 'prefetch': 'maybe' is not 1, 0 or auto")]
    [InlineData("sinkwindow:window=8+h2o:budget=64,recent=65", "policy 'h2o': recent must be in [0, budget], not 65")]
    public void BadSpecsGiveOneClearMessage(string spec, string expected)
    {
        var e = Assert.Throws<KvConfigException>(() => KvPolicies.Parse(spec));
        Assert.Equal(expected, e.Message);
    }

    /// <summary>The README's policy table is what <c>vidkv kv policies</c> prints (paste the command's output there when this fails).</summary>
    [Fact]
    public void ReadmePolicyTableIsTheCommandsOutput()
    {
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.Equal(0, CliRunner.Run(CliApp.BuildRoot(), ["kv", "policies"], error, output));
        Assert.Equal("", error.ToString());
        string printed = output.ToString().ReplaceLineEndings("\n");
        Assert.Equal(PolicyDocs.MarkdownTable(), printed);
        Assert.Equal(KvPolicies.All.Count + 2, printed.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);

        var readme = File.ReadAllLines(Path.Combine(TestData.RepositoryRoot, "README.md"));
        string header = printed[..printed.IndexOf('\n')];
        int start = Array.IndexOf(readme, header);
        Assert.True(start >= 0, $"README.md has no line '{header}'");
        Assert.Equal(printed, string.Concat(readme.Skip(start).TakeWhile(line => line.StartsWith('|')).Select(line => line + "\n")));
    }

    /// <summary>Every command that takes <c>--policy</c> lists every registered policy with its options in the help.</summary>
    [Theory]
    [InlineData("kv", "eval")]
    [InlineData("bench")]
    public void PolicyHelpListsEveryRegisteredPolicy(params string[] path)
    {
        Command command = CliApp.BuildRoot();
        foreach (string name in path) command = command.Subcommands.Single(c => c.Name == name);
        string help = command.Options.Single(o => o.Name == "--policy").Description!;
        foreach (var policy in KvPolicies.All)
        {
            string names = string.Join('|', [policy.Name, .. policy.Aliases]);
            Assert.Contains(policy.Options.Count == 0 ? $"\n  {names}" : $"\n  {names}: {policy.Synopsis}", help);
        }
    }

    /// <summary>A spec reads the separately given budget exactly when an option whose default comes from it is left out, in any part of a composition.</summary>
    [Theory]
    [InlineData("full", false)]
    [InlineData("sinkwindow", true)]
    [InlineData("sinkwindow:window=60", false)]
    [InlineData("sinkwindow:sinks=2", true)]
    [InlineData("freekv", true)]
    [InlineData("freekv:budget=100", false)]
    [InlineData("lserve", true)]
    [InlineData("quickprefill", false)]
    [InlineData("quickprefill:ratio=0.25,group=4", false)]
    [InlineData("quickprefill+freekv", true)]
    [InlineData("quickprefill+freekv:budget=64,sinks=8", false)]
    [InlineData("infinipotv+livevlm", true)]
    [InlineData("videoscan+resv", false)]
    [InlineData("nonsense", false)]
    public void ReadsBudgetWhenAnOptionDefaultsToIt(string spec, bool reads)
    {
        Assert.Equal(reads, KvPolicies.ReadsBudget(spec));
        if (spec == "nonsense") return;
        // The policy built (its name spells every option) changes with the budget exactly when the spec reads it.
        Assert.Equal(reads, KvPolicies.Parse(spec, 100).Name != KvPolicies.Parse(spec, 200).Name);
    }
}

