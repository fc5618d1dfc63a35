import NIOCore

// Internal helpers shared by the message codecs. Names carry a `pgwire` prefix so
// they cannot collide with NIO's own API or with other extensions in this module.

extension ByteBuffer {
    /// Reads a fixed width integer or throws `.truncated`.
    @inline(__always)
    mutating func pgwireReadInteger<T: FixedWidthInteger>(as: T.Type = T.self, _ context: @autoclosure () -> String) throws -> T {
        guard let value = self.readInteger(as: T.self) else {
            throw PGWireError.truncated("\(context()): payload ends inside a \(MemoryLayout<T>.size)-byte integer")
        }
        return value
    }

    /// Reads a NUL-terminated UTF-8 string.
    ///
    /// Throws `.missingTerminator` if no NUL byte is left in the buffer and
    /// `.invalidValue` if the bytes are not valid UTF-8.
    mutating func pgwireReadString(_ context: @autoclosure () -> String) throws -> String {
        guard let nulIndex = self.readableBytesView.firstIndex(of: 0) else {
            throw PGWireError.missingTerminator("\(context()): string is missing its NUL terminator")
        }
        let length = nulIndex - self.readerIndex
        guard let string = self.pgwireGetValidatedString(at: self.readerIndex, length: length) else {
            throw PGWireError.invalidValue("\(context()): string is not valid UTF-8")
        }
        self.moveReaderIndex(forwardBy: length + 1)
        return string
    }

    /// Reads `length` bytes as a validated UTF-8 string (no terminator).
    mutating func pgwireReadString(length: Int, _ context: @autoclosure () -> String) throws -> String {
        guard length >= 0, length <= self.readableBytes else {
            throw PGWireError.truncated("\(context()): payload ends inside a string")
        }
        guard let string = self.pgwireGetValidatedString(at: self.readerIndex, length: length) else {
            throw PGWireError.invalidValue("\(context()): string is not valid UTF-8")
        }
        self.moveReaderIndex(forwardBy: length)
        return string
    }

    /// Returns the bytes at `index..<index+length` as a String, or nil if they are not valid UTF-8.
    func pgwireGetValidatedString(at index: Int, length: Int) -> String? {
        guard length > 0 else { return "" }
        return self.withUnsafeReadableBytes { raw -> String? in
            let offset = index - self.readerIndex
            let bytes = UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + length)])
            // ASCII fast path.
            var allASCII = true
            for byte in bytes where byte >= 0x80 {
                allASCII = false
                break
            }
            let string = String(decoding: bytes, as: UTF8.self)
            if allASCII { return string }
            // Decoding replaces invalid sequences with U+FFFD; a lossless round-trip proves validity.
            return string.utf8.elementsEqual(bytes) ? string : nil
        }
    }

    /// Reads exactly `length` bytes into an array, or throws `.truncated`.
    mutating func pgwireReadBytes(length: Int, _ context: @autoclosure () -> String) throws -> [UInt8] {
        guard length >= 0, let bytes = self.readBytes(length: length) else {
            throw PGWireError.truncated("\(context()): payload ends before \(length) declared bytes")
        }
        return bytes
    }

    /// Reads an `Int32`-length-prefixed value where -1 means NULL. The result is a slice (no copy).
    mutating func pgwireReadNullableValue(_ context: @autoclosure () -> String) throws -> ByteBuffer? {
        let length = try self.pgwireReadInteger(as: Int32.self, context())
        if length == -1 { return nil }
        guard length >= 0 else {
            throw PGWireError.invalidValue("\(context()): value length \(length) is negative")
        }
        guard let slice = self.readSlice(length: Int(length)) else {
            throw PGWireError.truncated("\(context()): value of \(length) bytes exceeds the remaining payload")
        }
        return slice
    }

    /// Reads a `UInt16` element count and checks that `count * minimumElementSize` bytes remain,
    /// so arrays are never sized from an unchecked count.
    mutating func pgwireReadCount(minimumElementSize: Int, _ context: @autoclosure () -> String) throws -> Int {
        let count = Int(try self.pgwireReadInteger(as: UInt16.self, context()))
        guard count * minimumElementSize <= self.readableBytes else {
            throw PGWireError.truncated("\(context()): count \(count) exceeds what the remaining payload can hold")
        }
        return count
    }

    /// Throws `.trailingBytes` if any bytes are left unread.
    @inline(__always)
    func pgwireExpectEnd(_ context: @autoclosure () -> String) throws {
        guard self.readableBytes == 0 else {
            throw PGWireError.trailingBytes("\(context()): \(self.readableBytes) unexpected trailing bytes")
        }
    }

    /// Writes a string followed by a NUL terminator.
    ///
    /// Embedded NUL characters would break framing on the wire, so they are dropped.
    mutating func pgwireWriteString(_ string: String) {
        // On the contiguous bytes (a String's usual form): `utf8.contains` walks the view a
        // character at a time, about ten instructions a byte.
        let hasNUL = string.utf8.withContiguousStorageIfAvailable { bytes in
            bytes.contains(0)
        } ?? string.utf8.contains(0)
        if hasNUL {
            for byte in string.utf8 where byte != 0 {
                self.writeInteger(byte)
            }
        } else {
            self.writeString(string)
        }
        self.writeInteger(UInt8(0))
    }

    /// Writes an `Int32` length (-1 for nil) followed by the value bytes.
    mutating func pgwireWriteNullableValue(_ value: ByteBuffer?) {
        if var value = value {
            self.writeInteger(Int32(truncatingIfNeeded: value.readableBytes))
            self.writeBuffer(&value)
        } else {
            self.writeInteger(Int32(-1))
        }
    }

    /// Writes a `UInt16` element count.
    @inline(__always)
    mutating func pgwireWriteCount(_ count: Int) {
        self.writeInteger(UInt16(truncatingIfNeeded: count))
    }

    /// Writes a complete typed frame: identifier byte, `Int32` length (patched after
    /// `body` ran) and the payload written by `body`.
    @inline(__always)
    mutating func pgwireWriteFrame(_ type: UInt8, _ body: (inout ByteBuffer) -> Void) {
        self.writeInteger(type)
        let lengthIndex = self.writerIndex
        self.writeInteger(Int32(0))
        body(&self)
        self.setInteger(Int32(truncatingIfNeeded: self.writerIndex - lengthIndex), at: lengthIndex)
    }

    /// Reads a `UInt16` count followed by that many `Int16` values (count checked first).
    mutating func pgwireReadInt16Array(_ context: @autoclosure () -> String) throws -> [Int16] {
        let count = try self.pgwireReadCount(minimumElementSize: 2, context())
        var values = [Int16]()
        values.reserveCapacity(count)
        for _ in 0..<count {
            values.append(self.readInteger(as: Int16.self)!)
        }
        return values
    }

    /// Writes a `UInt16` count followed by the `Int16` values.
    mutating func pgwireWriteInt16Array(_ values: [Int16]) {
        self.pgwireWriteCount(values.count)
        for value in values {
            self.writeInteger(value)
        }
    }
}
