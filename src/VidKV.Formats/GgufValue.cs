using System.Globalization;

namespace VidKV.Formats;

/// <summary>GGUF metadata value types, numbered as in the file format.</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One GGUF metadata value. Scalars are boxed .NET primitives (byte, sbyte, ushort, short, uint, int, float, bool,
/// string, ulong, long, double); an array is a <see cref="GgufArray"/>.
/// </summary>
internal sealed class GgufValue(GgufValueType type, object value)
{
    public GgufValueType Type { get; } = type;
    public object Value { get; } = value;

    public static GgufValue Of(string value) => new(GgufValueType.String, value);
    public static GgufValue Of(uint value) => new(GgufValueType.UInt32, value);
    public static GgufValue Of(int value) => new(GgufValueType.Int32, value);
    public static GgufValue Of(float value) => new(GgufValueType.Float32, value);
    public static GgufValue Of(bool value) => new(GgufValueType.Bool, value);
    public static GgufValue Of(ulong value) => new(GgufValueType.UInt64, value);
    public static GgufValue Of(string[] values) => new(GgufValueType.Array, new GgufArray(GgufValueType.String, values));
    public static GgufValue Of(float[] values) => new(GgufValueType.Array, new GgufArray(GgufValueType.Float32, values));
    public static GgufValue Of(int[] values) => new(GgufValueType.Array, new GgufArray(GgufValueType.Int32, values));

    public bool IsInteger => Type is GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.UInt16 or GgufValueType.Int16
        or GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.UInt64 or GgufValueType.Int64;

    public long AsInt64() => IsInteger ? Convert.ToInt64(Value, CultureInfo.InvariantCulture)
        : Type == GgufValueType.Bool ? ((bool)Value ? 1 : 0)
        : throw new InvalidCastException($"{Type} is not an integer");

    public double AsDouble() => IsInteger || Type is GgufValueType.Float32 or GgufValueType.Float64
        ? Convert.ToDouble(Value, CultureInfo.InvariantCulture)
        : throw new InvalidCastException($"{Type} is not a number");

    public bool AsBool() => Type == GgufValueType.Bool ? (bool)Value : AsInt64() != 0;

    public string AsString() => Type == GgufValueType.String ? (string)Value : throw new InvalidCastException($"{Type} is not a string");

    public GgufArray AsArray() => Type == GgufValueType.Array ? (GgufArray)Value : throw new InvalidCastException($"{Type} is not an array");

    /// <summary>Short human form for `vidkv model info`: scalars as text, arrays as their type and length with the first items.</summary>
    public override string ToString() => Value switch
    {
        string s => s.Length > 80 ? s[..77].ReplaceLineEndings("\\n") + "..." : s.ReplaceLineEndings("\\n"),
        GgufArray a => a.ToString(),
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Convert.ToString(Value, CultureInfo.InvariantCulture) ?? "",
    };
}

/// <summary>
/// A GGUF array: elements of one type, held as a typed .NET array (string[], float[], int[], ...; nested arrays as GgufArray[]).
/// </summary>
internal sealed class GgufArray(GgufValueType elementType, Array items)
{
    public GgufValueType ElementType { get; } = elementType;
    public Array Items { get; } = items;
    public int Length => Items.Length;

    public string[] AsStrings() => Items as string[] ?? throw new InvalidCastException($"array of {ElementType} is not an array of strings");

    public float[] AsSingles() => Items as float[] ?? Items.Cast<object>().Select(o => Convert.ToSingle(o, CultureInfo.InvariantCulture)).ToArray();

    public int[] AsInt32s() => Items as int[] ?? Items.Cast<object>().Select(o => Convert.ToInt32(o, CultureInfo.InvariantCulture)).ToArray();

    public override string ToString()
    {
        var head = Items.Cast<object>().Take(4).Select(o => o is string s ? $"'{s}'" : Convert.ToString(o, CultureInfo.InvariantCulture));
        return $"[{ElementType} × {Length}: {string.Join(", ", head)}{(Length > 4 ? ", ..." : "")}]";
    }
}
