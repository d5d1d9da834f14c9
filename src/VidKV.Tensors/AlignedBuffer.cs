using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace VidKV.Tensors;

/// <summary>
/// A scratch buffer that starts on a 64-byte boundary and never moves: grown to the largest length asked for, then
/// reused. A managed array's data sits 16 bytes past its header, so a zmm load from one straddles two cache lines
/// unless the array happens to start on one; the kernels' loads of packed weights then cost two loads each (measured
/// on Zen 5: the Q8_0 VNNI tile kernel at 225 GMAC/s from a buffer 16 bytes off a line, 190 from 8 bytes off, 270 on
/// a line). The array is pinned (the pinned object heap), so the pointer stays valid until the buffer grows again;
/// new space is zeroed, as a new array's.
/// </summary>
public sealed unsafe class AlignedBuffer<T> where T : unmanaged
{
    /// <summary>The boundary the data starts on: a cache line, one zmm register.</summary>
    public const int Alignment = 64;

    byte[] array = [];
    T* start;
    int capacity;

    /// <summary>The first element of at least <paramref name="length"/> elements (grows the buffer when it is shorter).</summary>
    public T* Pointer(int length)
    {
        if (length > capacity) Grow(length);
        return start;
    }

    /// <summary>The first <paramref name="length"/> elements (grows the buffer when it is shorter).</summary>
    public Span<T> Span(int length) => new(Pointer(length), length);

    void Grow(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        array = GC.AllocateArray<byte>(checked(length * sizeof(T) + Alignment - 1), pinned: true);
        nint address = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        start = (T*)((address + Alignment - 1) & ~(nint)(Alignment - 1));
        capacity = length;
    }
}
