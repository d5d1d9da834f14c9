using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using VidKV.Tensors;

namespace VidKV.Formats;

/// <summary>Writes safetensors files (F32, F16, BF16), for tests and conversions.</summary>
internal sealed class SafetensorsWriter
{
    readonly List<(string Name, GgmlType Type, long[] Shape, byte[] Data)> tensors = [];

    /// <summary>Adds a tensor; <paramref name="shape"/> is row-major ([rows, columns]).</summary>
    public SafetensorsWriter Add(string name, GgmlType type, long[] shape, ReadOnlySpan<float> values)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)) throw new ArgumentException($"safetensors holds f32, f16 or bf16, not {GgmlTypes.Name(type)}");
        var data = new byte[GgmlTypes.RowBytes(type, values.Length)];
        Quantize.Row(type, values, data);
        tensors.Add((name, type, shape, data));
        return this;
    }

    public void Write(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        if (metadata != null) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var t in tensors)
        {
            header[t.Name] = new { dtype = t.Type.ToString(), shape = t.Shape, data_offsets = new[] { offset, offset + t.Data.Length } };
            offset += t.Data.Length;
        }
        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int padding = (8 - json.Length % 8) % 8;
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes((ulong)(json.Length + padding)));
        stream.Write(json);
        for (int i = 0; i < padding; i++) stream.WriteByte((byte)' ');
        foreach (var t in tensors) stream.Write(t.Data);
    }
}
