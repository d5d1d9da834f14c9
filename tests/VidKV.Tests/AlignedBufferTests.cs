using VidKV.Tensors;

namespace VidKV.Tests;

public unsafe class AlignedBufferTests
{
    /// <summary>
    /// Every length gives a pointer on a 64-byte boundary, whatever the element size; a shorter request reuses the same
    /// memory (what was written stays), a longer one moves to new, zeroed memory that survives a garbage collection.
    /// </summary>
    [Fact]
    public void StartsOnACacheLineGrowsZeroedAndKeepsItsPlace()
    {
        var bytes = new AlignedBuffer<byte>();
        var floats = new AlignedBuffer<float>();
        foreach (int length in new[] { 1, 3, 17, 63, 65, 1000, 4097, 100_003 })
        {
            byte* b = bytes.Pointer(length);
            float* f = floats.Pointer(length);
            Assert.Equal(0, (long)b % 64);
            Assert.Equal(0, (long)f % 64);
            var span = floats.Span(length);
            Assert.True(span.IndexOfAnyExcept(0f) < 0, $"new space of {length} floats is not zeroed");
            span.Fill(length);
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            Assert.True(floats.Pointer(length / 2) == f, "a shorter request moved the buffer");
            Assert.Equal(length, floats.Span(length)[length - 1]);
        }
    }
}
