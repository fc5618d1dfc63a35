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
    /// - `pairs` (256 x 128 bytes), indexed by a byte and the next byte lower-cased
    ///   (`(next | 0x20) & 0x7F`): `special` in every column of a byte that sends the text to
    ///   the guards on its own; for a letter followed by a letter, 1 + the number of the first
    ///   word that begins with the two (0: none does, the usual case: one load and a test per
    ///   byte, with the next byte's load carried over);
    /// - `slots` (`slot` bytes per word): its length, 1 + the number of the next word with the
    ///   same first two letters (0: none), then its letters.
    private static let pairsAt = 0, slotsAt = 256 * 128, slot = 16
    private static let special: UInt8 = 0xFF
    private static let table: [UInt8] = {
        let letters = words.map { Array($0.utf8) }
        var table = [UInt8](repeating: 0, count: slotsAt + letters.count * slot)
        let specials = Array(0x80...0xFF) + [Int(UInt8(ascii: "\"")), Int(UInt8(ascii: "&")), Int(UInt8(ascii: "\\"))]
        for byte in specials {
            for next in 0..<128 { table[pairsAt + byte << 7 + next] = special }
        }
        // Backwards, so each pair's chain lists the words in their order.
        for (number, word) in letters.enumerated().reversed() {
            precondition(word.count >= 2 && word.count < slot && number < 254 && word.allSatisfy { $0 >= 0x61 && $0 <= 0x7A },
                         "GuardPrefilter.words: 2 to \(slot - 1) lower-case letters each, at most 254 words")
            let lower = pairsAt + Int(word[0]) << 7 + Int(word[1]), upper = lower - 0x20 << 7
            let at = slotsAt + number * slot
            table[at] = UInt8(word.count)
            table[at + 1] = table[lower]
            table.replaceSubrange(at + 2 ..< at + 2 + word.count, with: word)
            table[lower] = UInt8(number + 1)
            table[upper] = UInt8(number + 1)
        }
        return table
    }()

    /// Whether the guards must look at `sql` (false: both would allow it and report nothing).
    static func mayMatter(_ sql: UnsafeRawBufferPointer) -> Bool {
        guard let text = sql.baseAddress?.assumingMemoryBound(to: UInt8.self), sql.count > 0 else { return false }
        let count = sql.count
        return table.withUnsafeBufferPointer { table in
            let table = table.baseAddress!
            /// A non-zero pair entry at `index`: a special byte, or a word to compare from its third letter.
            func found(_ entry: UInt8, at index: Int) -> Bool {
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
            var byte = text[0]
            var index = 0
            let last = count &- 1
            while index < last {
                let next = text[index &+ 1]
                let entry = table[pairsAt &+ Int(byte) &<< 7 &+ Int((next | 0x20) & 0x7F)]
                if entry != 0, found(entry, at: index) { return true }
                byte = next
                index &+= 1
            }
            // The last byte has no next letter: only a special one counts.
            return table[pairsAt &+ Int(byte) &<< 7] == special
        }
    }

    static func mayMatter(_ sql: String) -> Bool {
        var sql = sql
        return sql.withUTF8 { mayMatter(UnsafeRawBufferPointer($0)) }
    }
}
