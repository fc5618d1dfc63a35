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

    /// The first letters of `words`, as bits (a = bit 0).
    private static let firstLetters: UInt32 = {
        var bits: UInt32 = 0
        for word in words { bits |= 1 << UInt32(word.utf8.first! - UInt8(ascii: "a")) }
        return bits
    }()

    /// Whether the guards must look at `sql` (false: both would allow it and report nothing).
    static func mayMatter(_ sql: UnsafeRawBufferPointer) -> Bool {
        let firstLetters = Self.firstLetters
        var index = 0
        while index < sql.count {
            let byte = sql[index]
            // `| 0x20` lower-cases ASCII letters and maps no other byte onto one.
            let letter = (byte | 0x20) &- UInt8(ascii: "a")
            guard letter < 26, firstLetters & (1 << UInt32(letter)) != 0 else {
                if byte >= 0x80 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "&") || byte == UInt8(ascii: "\\") {
                    return true
                }
                index += 1
                continue
            }
            // The second letter is compared before a whole word. Keep this switch, `words` and
            // `firstLetters` in step (a test checks that every word is found).
            let next = index + 1 < sql.count ? sql[index + 1] | 0x20 : 0
            switch (byte | 0x20, next) {
            case (UInt8(ascii: "s"), UInt8(ascii: "e")):
                if word(sql, index, "set") { return true }
            case (UInt8(ascii: "d"), UInt8(ascii: "o")):
                return true
            case (UInt8(ascii: "d"), UInt8(ascii: "i")):
                if word(sql, index, "discard") { return true }
            case (UInt8(ascii: "d"), UInt8(ascii: "e")):
                if word(sql, index, "declare") || word(sql, index, "deallocate") { return true }
            case (UInt8(ascii: "a"), UInt8(ascii: "l")):
                if word(sql, index, "alter") { return true }
            case (UInt8(ascii: "a"), UInt8(ascii: "d")):
                if word(sql, index, "advisory") { return true }
            case (UInt8(ascii: "l"), UInt8(ascii: "o")):
                if word(sql, index, "load") { return true }
            case (UInt8(ascii: "l"), UInt8(ascii: "i")):
                if word(sql, index, "listen") { return true }
            case (UInt8(ascii: "c"), UInt8(ascii: "o")):
                if word(sql, index, "copy") { return true }
            case (UInt8(ascii: "p"), UInt8(ascii: "r")):
                if word(sql, index, "prepare") { return true }
            case (UInt8(ascii: "e"), UInt8(ascii: "x")):
                if word(sql, index, "execute") { return true }
            case (UInt8(ascii: "h"), UInt8(ascii: "o")):
                if word(sql, index, "hold") { return true }
            case (UInt8(ascii: "t"), UInt8(ascii: "e")):
                if word(sql, index, "temp") { return true }
            default:
                break
            }
            index += 1
        }
        return false
    }

    /// `word` (lower case) at `index`, in any case.
    @inline(__always)
    private static func word(_ sql: UnsafeRawBufferPointer, _ index: Int, _ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard index + count <= sql.count else { return false }
        let letters = word.utf8Start
        for offset in 1..<count where sql[index + offset] | 0x20 != letters[offset] {
            return false
        }
        return true
    }

    static func mayMatter(_ sql: String) -> Bool {
        var sql = sql
        return sql.withUTF8 { mayMatter(UnsafeRawBufferPointer($0)) }
    }
}
