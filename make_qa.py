"""Build qa.jsonl (question/answer pairs about the Iliad) from qa_facts.jsonl, or check a built one.

    python make_qa.py                    # write qa.jsonl from qa_facts.jsonl
    python make_qa.py --check qa.jsonl   # report problems, one line each; exit 2 if any

qa.py describes the formats and the train/test split, and does the work. Each fact's `evidence` is a span copied
verbatim from data.txt (Butler's translation: curly quotes, em dashes and line breaks "\\n" included) that holds its
`answer`, so a machine checks every fact. Names are spelled as Butler spells them (Jove, Minerva, Ulysses, Diomed, ...)
and questions use only the corpus's characters (an apostrophe is Butler's ’): that is what a model trained on data.txt
saw. To add a fact: copy the shortest span of data.txt that holds the answer, add a line to qa_facts.jsonl with at least
three phrasings of the question, and run `python make_qa.py`. Categories: parentage, kills (and wounds), places,
catalogue (ship counts), gods, objects, people, games (the funeral games), books.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

from errors import ArgumentParser, run_main
from qa import DEFAULT_CORPUS, DEFAULT_FACTS, DEFAULT_OUT, Problems, build, load_qa, read_corpus, summary, validate_qa


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--out", default=DEFAULT_OUT, help="where to write the dataset (default: qa.jsonl beside this script); "
                                         "must not be the facts file or the corpus")
    a("--facts", default=DEFAULT_FACTS,
      help="the hand-written facts, one JSON object a line (default: qa_facts.jsonl beside this script)")
    a("--check", metavar="PATH",
      help="instead of building, validate an existing qa.jsonl: one line per problem, exit 2 if there are any")
    a("--overwrite", action="store_true", help="replace --out if it exists and holds anything other than the dataset "
                                               "the facts make (a file that holds exactly that is left as it is)")
    a("--corpus", default=DEFAULT_CORPUS,
      help="the text the evidence is quoted from (default: data.txt beside this script)")
    args = p.parse_args(argv)
    try:
        if args.check is not None:
            if problems := validate_qa(args.check, read_corpus(args.corpus)):
                raise Problems(args.check, problems)
            print(f"{args.check}: ok; " + summary(load_qa(args.check)))
            return 0
        records = build(args.out, args.facts, args.corpus, args.overwrite)
    except Problems as e:  # the list goes to stdout, the one-line error to stderr
        print(e.report)
        raise
    print(f"wrote {args.out}: " + summary(records))
    return 0


if __name__ == "__main__":
    run_main(main)
