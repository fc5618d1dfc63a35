/// A byte scan in front of StatementGuard and TransactionModeGuard. Both guards react only to
/// unquoted words from a short list (SET, RESET, set_config, DO, ALTER, LOAD, COPY, DISCARD,
/// LISTEN, PREPARE, EXECUTE, DECLARE ... HOLD, DEALLOCATE, TEMP / pg_temp, pg_advisory_*), to
/// quoted and U&"..." identifiers, and to backslashes (standard_conforming_strings). Text in
/// which none of these appears anywhere, in any case, inside or outside quotes and comments, is
/// allowed by both without anything to report, so it need not be lexed twice: the usual
/// SELECT / INSERT / UPDATE of an application passes with one pass over its bytes.
///
/// Conservative by construction: a word is looked for as a substring (so `offset` counts as
/// `set`), and any byte the scan cannot judge (`"`, `&`, `\`, non-ASCII) sends the text to the
/// guards. Tests hold every refusal and report of both guards' corpora, and random texts, to it.
enum GuardPrefilter {
    /// Lower-case words; every keyword either guard acts on contains one of them.
    static let words: [String] = [
        "set", "do", "alter", "load", "copy", "discard", "listen", "prepare", "execute", "declare",
        "hold", "deallocate", "temp", "advisory",
    ]

    /// Everything the scan looks up, in one buffer (one global to load, nothing retained):
    /// - `pairs` (256 x 256 bytes), indexed by two neighbouring bytes as one little-endian
    ///   16-bit load (`byte | next << 8`): `special` wherever the first byte sends the text to
    ///   the guards on its own; for two letters (either case), 1 + the number of the first word
    ///   that begins with them (0: none does, the usual case: a load, a lookup and a test per
    ///   byte; folding the second byte's case in the loop instead cost twice the instructions);
    /// - `slots` (`slot` bytes per word): its length, 1 + the number of the next word with the
    ///   same first two letters (0: none), then its letters.
    private static let pairsAt = 0, slotsAt = 256 * 256, slot = 16
    private static let special: UInt8 = 0xFF
    private static let table: [UInt8] = {
        let letters = words.map { Array($0.utf8) }
        var table = [UInt8](repeating: 0, count: slotsAt + letters.count * slot)
        let specials = Array(0x80...0xFF) + [Int(UInt8(ascii: "\"")), Int(UInt8(ascii: "&")), Int(UInt8(ascii: "\\"))]
        for byte in specials {
            for next in 0..<256 { table[pairsAt + byte | next << 8] = special }
        }
        // Backwards, so each pair's chain lists the words in their order.
        for (number, word) in letters.enumerated().reversed() {
            precondition(word.count >= 2 && word.count < slot && number < 254 && word.allSatisfy { $0 >= 0x61 && $0 <= 0x7A },
                         "GuardPrefilter.words: 2 to \(slot - 1) lower-case letters each, at most 254 words")
            let at = slotsAt + number * slot
            let chain = table[pairsAt + Int(word[0]) | Int(word[1]) << 8]
            table[at] = UInt8(word.count)
            table[at + 1] = chain
            table.replaceSubrange(at + 2 ..< at + 2 + word.count, with: word)
            for first in [word[0], word[0] - 0x20] {
                for second in [word[1], word[1] - 0x20] { table[pairsAt + Int(first) | Int(second) << 8] = UInt8(number + 1) }
            }
        }
        return table
    }()

    /// Whether the guards must look at `sql` (false: both would allow it and report nothing).
    static func mayMatter(_ sql: UnsafeRawBufferPointer) -> Bool {
        guard let start = sql.baseAddress, sql.count > 0 else { return false }
        let text = start.assumingMemoryBound(to: UInt8.self)
        let count = sql.count
        return table.withUnsafeBufferPointer { table in
            let table = table.baseAddress!
            let last = count &- 1
            var index = 0
            while index < last {
                let pair = UInt16(littleEndian: start.loadUnaligned(fromByteOffset: index, as: UInt16.self))
                let entry = table[pairsAt &+ Int(pair)]
                if entry != 0, found(entry, at: index, in: text, count: count, table: table) { return true }
                index &+= 1
            }
            // The last byte has no next letter: only a special one counts (the row of a
            // special byte is special in every column, a letter's column 0 is 0).
            return table[pairsAt &+ Int(text[last])] == special
        }
    }

    /// A non-zero pair entry at `index`: a special byte, or words to compare from their third letter.
    @inline(never)
    private static func found(_ entry: UInt8, at index: Int, in text: UnsafePointer<UInt8>, count: Int, table: UnsafePointer<UInt8>) -> Bool {
        if entry == special { return true }
        var number = entry
        while number != 0 {
            let at = slotsAt &+ Int(number &- 1) &* slot
            let length = Int(table[at])
            if length <= count &- index {
                var offset = 2
                // `| 0x20` lower-cases ASCII letters and maps no other byte onto one.
                while offset < length, text[index &+ offset] | 0x20 == table[at &+ 2 &+ offset] { offset &+= 1 }
                if offset == length { return true }
            }
            number = table[at &+ 1]
        }
        return false
    }

    static func mayMatter(_ sql: String) -> Bool {
        var sql = sql
        return sql.withUTF8 { mayMatter(UnsafeRawBufferPointer($0)) }
    }
}
