using System.CommandLine;
using VidKV.Cli;

return CliRunner.Run(CliApp.BuildRoot(), args);

namespace VidKV.Cli
{
    /// <summary>The vidkv command tree.</summary>
    public static class CliApp
    {
        public static RootCommand BuildRoot() => new("VidKV: streaming-video LLM inference on the CPU. Loads GGUF models (llama, qwen2) and runs them exactly like llama.cpp.")
        {
            GenerateCommand.Create(),
            PerplexityCommand.Create(),
            TokenizeCommand.Create(),
            ModelCommands.Create(),
            KvCommands.Create(),
            BenchCommand.Create(),
            WatchCommand.Create(),
            ServeCommand.Create(),
            WorldCommand.Create(),
            EvalCommand.Create(),
        };
    }
}
