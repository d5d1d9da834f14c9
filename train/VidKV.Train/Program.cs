namespace VidKV.Train;

/// <summary>The trainer's command line (training arrives with the world generator; see issue 20).</summary>
public static class Program
{
    /// <summary>Entry point.</summary>
    public static int Main(string[] args)
    {
        LibTorchLoadFix.Apply();
        Console.Error.WriteLine("usage: VidKV.Train (training of the built-in tiny VLM: not yet)");
        return 2;
    }
}
