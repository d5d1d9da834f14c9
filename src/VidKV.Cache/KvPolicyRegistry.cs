namespace VidKV.Cache;

internal static partial class KvPolicies
{
    /// <summary>
    /// Every policy a spec can name, in the order help and the README list them. Adding a policy is its file (the
    /// class, with a descriptor) and one line here; parsing, help, docs and the policy test theories follow.
    /// </summary>
    public static readonly IReadOnlyList<KvPolicyDescriptor> All =
    [
        FullPolicy.Descriptor,
        SinkWindowPolicy.Descriptor,
        QuestPolicy.Descriptor,
        QuestPolicy.LServeDescriptor,
        FreeKvPolicy.Descriptor,
        ClusterKvPolicy.Descriptor,
        DuoAttentionPolicy.Descriptor,
        SnapKvPolicy.Descriptor,
        H2OPolicy.Descriptor,
        KeyNormPolicy.Descriptor,
        QuickPrefillPolicy.Descriptor,
        VideoScanPolicy.Descriptor,
        InfiniPotVPolicy.Descriptor,
        LiveVlmPolicy.Descriptor,
        ReSvPolicy.Descriptor,
    ];
}
