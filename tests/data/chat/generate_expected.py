# Renders tests/data/chat/*.jinja with jinja2 set up as transformers' apply_chat_template
# does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
# raise_exception, strftime_now, tojson with ensure_ascii=False) into *.expected and cases.json.
import json, os
from datetime import datetime
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama2": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "chatml": ("", "<|im_end|>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "gemma": ("<bos>", "<eos>"),
    # Llama-3.1's template layout (system header with dates, tools, tool calls, ipython);
    # the shared data has no copy of Meta's file, so this is a reconstruction.
    "llama31": ("<|begin_of_text|>", "<|eot_id|>"),
}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "  The capital of France is Paris.  "},
    {"role": "user", "content": "And of Italy?\nAnswer in one word."},
]


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def env():
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
    return e


def render(source, messages, add_generation_prompt, bos, eos):
    try:
        out = env().from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                               bos_token=bos, eos_token=eos, date_string="26 Jul 2024")
        return {"output": out}
    except Exception as ex:  # noqa: BLE001 - any template error is an expected outcome
        return {"error": str(ex)}


# Snippets for the features of the subset, whitespace control above all.
FEATURES = [
    "a\n  {% if true %}\n  x\n  {% endif %}\n  {{ 1 }}  {% if 1 %}y{% endif %}\n",
    "  {%- if true -%}  \n x \n {%- endif %}\n|",
    "{% for m in messages %}\n    {{ m.role }}\n{% endfor %}\nend\n\n",
    "{%+ if true %}x{% endif +%}\ny {# c #}\n  {# d #}\nz{#- e -#}  w",
    "{{ messages[1:] | length }} {{ messages[-1].role }} {{ messages[::2] | length }}",
    "{{ messages[1:3] | map_absent }}",
    "{{ 'abc'[1:] }} {{ 'héllo'[1:3] }} {{ 'héllo' | length }} {{ [1,2,3][::-1] }} {{ 'abc'[-1] }}",
    "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 'a' ~ 1 ~ none }} {{ 10 - 2 - 3 }}",
    "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 3.0 }} {{ 1e16 }} {{ 123456789012345.6 }} {{ 0.0001 }}",
    "{{ [1, 'a', none, true, 2.5] }} {{ {'k': 'v', 'n': [1]} }} {{ \"it's\" }} {{ ['it\\'s'] }}",
    "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}",
    "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}[{{ x }}]{% endfor %}{{ x }}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }} {% endfor %}",
    "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role[0] }}{% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if loop.first %}{% continue %}{% endif %}{{ m.role }}{% endfor %}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k in {'x': 1} %}{{ k }}{% endfor %}",
    "{{ '  hi  ' | trim }}|{{ 'Hi' | upper }}{{ 'Hi' | lower }}|{{ 'hello-world foo_bar' | title }}|{{ 'hello-world foo_bar'.title() }}|{{ [1,2] | first }}{{ [1,2] | last }}|{{ ['a','b'] | join(', ') }}|{{ undefined_x | default('dflt') }}|{{ '' | default('e', true) }}",
    "{{ '  x y  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}|{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b') }}{{ {'a': 1}.get('b', 2) }}",
    "{{ {'a': [1, 2.5, 'é\"<'], 'b': none, 'c': true} | tojson }}|{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}|{{ 'x\n' | tojson }}",
    "{{ x is defined }}{{ messages is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is string }}{{ x is not defined }}{{ not x is defined }}{{ 3 is odd }}{{ 1 is number }}{{ {} is mapping }}",
    "{{ 'a' in 'cat' }}{{ 'z' not in 'cat' }}{{ 2 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 1 < 2 < 3 }}{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' < 'b' }}{{ none == none }}{{ [1] == [1] }}",
    "{{ 'y' if messages else 'n' }}{{ 'y' if [] else 'n' }}[{{ 'y' if false }}]{{ 1 and 2 }}{{ 0 or 'z' }}{{ not 0 }}",
    "{{ messages[0]['content'] | trim | upper | length }} {{ (messages | length) * 2 }} {{ -1 | abs }} {{ '3' | int + 1 }} {{ 'a\\tb\\n' }}",
    "{{ messages[9] is defined }} {{ messages[0].nothere is defined }} {{ messages[0].nothere }} [{{ nothing }}]",
    "{{ raise_exception('custom failure ' + messages[0].role) }}",
    "{{ nothing.attr }}",
    "{{ 'a' + 1 }}",
    "{{ 1 < 'a' }}",
    "{% for x in 5 %}{% endfor %}",
    "{{ messages[0].content.split(' ')[1:] | join('_') }}{{ strftime_now('') }}",
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}{{ sys }}|{% for m in rest %}{{ m.role }},{% endfor %}",
    "{{ date_string }} {{ bos_token }}{{ eos_token }} {{ add_generation_prompt }} {{ tools is none }} {{ tools is defined }}",
    "{# comment {{ not rendered }} #}{{ 'x' }}{#- c -#}\n  {{ 'y' }}",
    "{% if false %}a{% elif false %}b{% elif true %}c{% else %}d{% endif %}{% if false %}a{% elif 0 %}b{% else %}e{% endif %}",
    "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('|') }}#{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }}",
    "{{ messages | selectattr('role') | list | length }} {{ [0, 1, '', 'a', none] | select | list }} {{ [1, 2, 3, 4, 5] | reject('odd') | list }} {{ [1, 5, 9] | select('gt', 4) | list }}",
    "{{ ['A', 'b'] | map('lower') | join }} {{ messages | map(attribute='nothere', default='d') | join(',') }} {{ messages | map(attribute='content') | map('length') | list }}",
    "{{ [{'f': {'n': 'x'} }, {'f': {'n': 'y'} }] | map(attribute='f.n') | join }} {{ [{'a': [7, 8]}] | map(attribute='a.1') | list }} {{ messages | selectattr('role', 'in', ['system', 'assistant']) | map(attribute='role') | join(',') }}",
    "{{ [3, 1, 2] | select('divisibleby', 3) | list }} {{ ['a', 'b'] | reject('equalto', 'a') | first }} {{ messages | selectattr('content', 'string') | list | length }}",
]


def main():
    cases = []
    for name, (bos, eos) in TOKENS.items():
        src = open(os.path.join(HERE, name + ".jinja")).read()
        variants = {
            "system": [SYSTEM] + TURNS,
            "no_system": TURNS,
            "empty": [],
            "one_user": TURNS[:1],
            "not_alternating": [TURNS[0], TURNS[0]],
            "assistant_last": TURNS[:2],
        }
        for vname, msgs in variants.items():
            for gen in (True, False):
                r = render(src, msgs, gen, bos, eos)
                cases.append({"template": name, "variant": vname, "messages": msgs, "add_generation_prompt": gen,
                              "bos_token": bos, "eos_token": eos, **r})
        main_case = render(src, [SYSTEM] + TURNS, True, bos, eos)
        if "error" in main_case:  # the template refuses a system prompt: render without it
            main_case = render(src, TURNS, True, bos, eos)
        open(os.path.join(HERE, name + ".expected"), "w").write(main_case["output"])
    for src in FEATURES:
        r = render(src, [SYSTEM] + TURNS, True, "<s>", "</s>")
        cases.append({"template": "feature", "source": src, "messages": [SYSTEM] + TURNS,
                      "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>", **r})
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"generator": "jinja2 " + jinja2.__version__, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")


main()
